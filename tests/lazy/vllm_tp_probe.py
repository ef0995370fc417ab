"""Run in the vLLM venv: vLLM's own tensor-parallel layers load weightguard lazy tensors.

    python vllm_tp_probe.py '{"artifact": ..., "plain": ..., "pub": ..., "tp": 4, ...}'

For each rank, vLLM's layers of a Llama-shaped model (``VocabParallelEmbedding``,
``ParallelLMHead``, ``QKVParallelLinear``, ``MergedColumnParallelLinear``,
``RowParallelLinear``) are built with that rank's tensor-parallel rank and size (no
process group: vLLM's rank/size lookups are pointed at the rank), and their own
``weight_loader``s are fed, once, the checkpoint's plain tensors and, once, what the
weightguard vLLM loader feeds under tensor parallelism (``integrations.vllm._rank_reader``
on the opened, verified handle of the signed, encrypted artifact); the parameters must
be equal.  Prints one JSON line: bytes decrypted per rank and the model's size.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _point_tp_at(rank: int, size: int) -> None:
    """Every vLLM module's tensor-parallel rank/size lookups answer this rank."""
    import vllm.model_executor.layers.linear
    import vllm.model_executor.layers.vocab_parallel_embedding
    import vllm.model_executor.parameter  # noqa: F401 - patched below

    for name, mod in list(sys.modules.items()):
        if not name.startswith("vllm") or mod is None:
            continue
        if "get_tensor_model_parallel_rank" in vars(mod):
            mod.get_tensor_model_parallel_rank = lambda: rank  # type: ignore[attr-defined]
        if "get_tensor_model_parallel_world_size" in vars(mod):
            mod.get_tensor_model_parallel_world_size = lambda: size  # type: ignore[attr-defined]


def _layers(spec: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """checkpoint name -> (vLLM parameter, shard id), as LlamaForCausalLM maps them."""
    from vllm.model_executor.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    h, inter, heads, kv_heads = spec["hidden"], spec["inter"], spec["heads"], spec["kv_heads"]
    out: dict[str, tuple[Any, Any]] = {
        "model.embed_tokens.weight": (VocabParallelEmbedding(spec["vocab"], h).weight, None),
        "lm_head.weight": (ParallelLMHead(spec["vocab"], h).weight, None),
    }
    for n in range(spec["layers"]):
        p = f"model.layers.{n}."
        qkv = QKVParallelLinear(h, h // heads, heads, kv_heads, bias=False)
        gate_up = MergedColumnParallelLinear(h, [inter, inter], bias=False)
        out |= {
            p + "self_attn.q_proj.weight": (qkv.weight, "q"),
            p + "self_attn.k_proj.weight": (qkv.weight, "k"),
            p + "self_attn.v_proj.weight": (qkv.weight, "v"),
            p + "self_attn.o_proj.weight": (RowParallelLinear(h, h, bias=False).weight, None),
            p + "mlp.gate_proj.weight": (gate_up.weight, 0),
            p + "mlp.up_proj.weight": (gate_up.weight, 1),
            p + "mlp.down_proj.weight": (RowParallelLinear(inter, h, bias=False).weight, None),
        }
    return out


def _load(params: dict[str, tuple[Any, Any]], weights: Any) -> dict[str, Any]:
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    seen: dict[str, Any] = {}
    for name, w in weights:
        if name not in params:  # norms: replicated, vLLM's default loader
            import torch

            param = torch.nn.Parameter(torch.empty(w.shape, dtype=w.dtype), requires_grad=False)
            default_weight_loader(param, w)
            seen[name] = param.data.clone()
            continue
        param, shard = params[name]
        loader = param.weight_loader
        if shard is None:
            loader(param, w)
        else:
            loader(param, w, shard)
        seen[name] = param
    return {k: (v.data.clone() if hasattr(v, "data") else v) for k, v in seen.items()}


def main() -> None:
    import os

    import torch
    from safetensors.torch import load_file

    spec = json.loads(sys.argv[1])
    os.environ["WEIGHTGUARD_ALLOW_KEY"] = spec["allowed_key"]
    from weightguard import open_model
    from weightguard.integrations.vllm import _rank_reader
    from weightguard.policy import PublicKey

    torch.set_default_dtype(torch.bfloat16)
    plain = load_file(spec["plain"])
    per_rank = []
    for rank in range(spec["tp"]):
        _point_tp_at(rank, spec["tp"])
        want = _load(_layers(spec), plain.items())
        # what the weightguard vLLM loader does under tensor parallelism
        with open_model(spec["artifact"], policy=PublicKey.from_file(spec["pub"])) as handle:
            ranks = _rank_reader(handle)
            assert ranks is not None, "the loader did not see tensor parallelism"
            try:
                got = _load(_layers(spec), ranks.lazy_tensors())
            finally:
                ranks.close()
            decrypted = ranks.stats["bytes_decrypted"]
        assert set(got) == set(want)
        for name in want:
            assert torch.equal(got[name], want[name]), (rank, name)
        per_rank.append(decrypted)
    total = sum(t.numel() * t.element_size() for t in plain.values())
    print(json.dumps({"bytes_decrypted_per_rank": per_rank, "model_bytes": total}))


if __name__ == "__main__":
    main()
