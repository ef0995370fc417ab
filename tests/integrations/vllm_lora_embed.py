"""Run by the vLLM venv's python (tests/integrations/test_vllm_lora.py): embed texts with
vLLM, once with no adapter and once per LoRA adapter, in one engine.

    python vllm_lora_embed.py '{"model": ..., "texts": [...], "adapters": {"name": path}}'

Prints ``RESULT <name> {"embeddings": [...]}`` per adapter (``base``: none), or
``ERROR <name> <type>: <message>`` when vLLM refused the adapter; the adapters run in the
order given, so a refused one goes last.
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
    for i, (name, path) in enumerate(spec["adapters"].items(), start=1):
        try:
            out = llm.embed(texts, lora_request=LoRARequest(name, i, path))
        except Exception as exc:
            print(f"ERROR {name} {type(exc).__name__}: {exc}", flush=True)
            continue
        embeddings = [list(o.outputs.embedding) for o in out]
        print(f"RESULT {name} " + json.dumps({"embeddings": embeddings}), flush=True)


if __name__ == "__main__":
    main()
