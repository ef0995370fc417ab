"""Run by the vLLM venv's python (tests/integrations/test_vllm.py): embed texts with vLLM.

    python vllm_embed.py '{"model": ..., "load_format": ..., "extra": {...}, "texts": [...]}'

Prints ``RESULT {"embeddings": [...]}`` and then ``PEAK_RSS_KIB n``: the run happens in a
child process, so ``n`` (RUSAGE_CHILDREN once it exited) is the peak RSS of the largest of
that process and its engine and worker processes, for this run alone.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def main() -> None:
    if sys.argv[1] != "--child":
        rc = subprocess.call([sys.executable, __file__, "--child", sys.argv[1]])
        print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", flush=True)
        sys.exit(rc)
    spec = json.loads(sys.argv[2])
    from vllm import LLM

    kwargs = {}
    if spec.get("load_format"):
        kwargs["load_format"] = spec["load_format"]
        kwargs["model_loader_extra_config"] = spec.get("extra") or {}
    llm = LLM(
        model=spec["model"],
        runner="pooling",
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        **kwargs,
        **spec.get("llm", {}),
    )
    out = llm.embed(spec["texts"])
    embeddings = [list(o.outputs.embedding) for o in out]
    print("RESULT " + json.dumps({"embeddings": embeddings}), flush=True)


if __name__ == "__main__":
    main()
