"""Run by the vLLM venv's python (tests/integrations/test_vllm_lora.py): embed texts with
vLLM, once with no adapter and once per LoRA adapter, in one engine.

    python vllm_lora_embed.py '{"model": ..., "texts": [...],
                                "adapters": [[name, path, how], ...]}'

``how``: ``"request"`` (``LoRARequest`` on the embed call: vLLM loads the adapter while
running the step, where a failure stops its engine core) or ``"add_lora"`` (loaded first
with ``llm_engine.add_lora``, vLLM's utility call, as the server's ``--lora-modules`` and
``/v1/load_lora_adapter`` do: a failure comes back to the caller).  Prints
``RESULT <name> {"embeddings": [...]}`` per adapter (``base``: none; ``after``: none,
after all adapters), or ``ERROR <name> <type>: <message>`` when vLLM refused the adapter.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    llm = LLM(
        model=spec["model"],
        runner="pooling",
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        enable_lora=True,
        max_lora_rank=8,
        max_loras=1,
        **spec.get("llm", {}),
    )
    texts = spec["texts"]
    out = llm.embed(texts)
    print("RESULT base " + json.dumps({"embeddings": [list(o.outputs.embedding) for o in out]}))
    for i, (name, path, how) in enumerate(spec["adapters"], start=1):
        request = LoRARequest(name, i, path)
        try:
            if how == "add_lora":
                llm.llm_engine.add_lora(request)
            out = llm.embed(texts, lora_request=request)
        except Exception as exc:
            print(f"ERROR {name} {type(exc).__name__}: {exc}", flush=True)
            continue
        embeddings = [list(o.outputs.embedding) for o in out]
        print(f"RESULT {name} " + json.dumps({"embeddings": embeddings}), flush=True)
    out = llm.embed(texts)  # the engine still serves
    print("RESULT after " + json.dumps({"embeddings": [list(o.outputs.embedding) for o in out]}))


if __name__ == "__main__":
    main()
