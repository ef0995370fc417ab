"""Tensor-parallel partial reads: lazy tensors whose ``narrow(0, ...)`` reads only a rank's
rows.  The weight loaders here do what vLLM's do (column-parallel and vocab-parallel:
``narrow`` on dim 0; row-parallel: ``narrow`` on dim 1; replicated: ``copy_`` of the
whole tensor): vLLM itself is not run (see docs/lazy.md)."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.lazy import record_offset, release_file
from tests.support.load import (
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import loader, safe_open
from weightguard.errors import ConfigError, IntegrityError
from weightguard.lazy import SafeOpen

H, INTER, KV, LAYERS, VOCAB = 256, 704, 64, 2, 512
HEADS = 8  # head size 32: k/v projections hold KV // 32 = 2 heads
COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")
ROW = ("o_proj", "down_proj")


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


def llama(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(torch.bfloat16)

    out = {"model.embed_tokens.weight": w(VOCAB, H), "lm_head.weight": w(VOCAB, H)}
    out["model.norm.weight"] = w(H)
    for n in range(LAYERS):
        p = f"model.layers.{n}."
        out |= {
            p + "self_attn.q_proj.weight": w(H, H),
            p + "self_attn.k_proj.weight": w(KV, H),
            p + "self_attn.v_proj.weight": w(KV, H),
            p + "self_attn.o_proj.weight": w(H, H),
            p + "mlp.gate_proj.weight": w(INTER, H),
            p + "mlp.up_proj.weight": w(INTER, H),
            p + "mlp.down_proj.weight": w(H, INTER),
            p + "input_layernorm.weight": w(H),
            p + "post_attention_layernorm.weight": w(H),
        }
    return out


def load_rank(weights, rank: int, tp: int) -> dict[str, torch.Tensor]:
    """A rank's parameters, filled the way vLLM's weight loaders fill them."""
    params: dict[str, torch.Tensor] = {}
    for name, w in weights:
        if any(c in name for c in COLUMN):
            shard = w.shape[0] // tp
            param = torch.empty(shard, *w.shape[1:], dtype=w.dtype)
            param.data.copy_(w.narrow(0, rank * shard, shard))
        elif any(c in name for c in ROW):
            shard = w.shape[1] // tp
            param = torch.empty(w.shape[0], shard, dtype=w.dtype)
            param.data.copy_(w.narrow(1, rank * shard, shard))
        else:
            param = torch.empty(w.shape, dtype=w.dtype)
            assert param.size() == w.size()
            param.data.copy_(w)
        params[name] = param
    return params


def expected_rank(ts: dict[str, torch.Tensor], rank: int, tp: int) -> dict[str, torch.Tensor]:
    return dict(load_rank(ts.items(), rank, tp))


def test_each_rank_reads_about_its_share(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = llama()
    art, _ = release_file(tmp_path / "rel", "model.safetensors", ts, key=file_key, keys=sign_keys)
    total = sum(t.numel() * t.element_size() for t in ts.values())
    tp = 4
    for rank in range(tp):
        audit, sink = memory_audit()
        with safe_open(art, policy=sign_keys.policy(), audit=audit) as f:
            got = load_rank(f.lazy_tensors(), rank, tp)
            decrypted = f.stats["bytes_decrypted"]
        want = expected_rank(ts, rank, tp)
        assert set(got) == set(want)
        for name in want:
            assert torch.equal(got[name], want[name]), (rank, name)
        assert decrypted <= 0.55 * total, (rank, decrypted / total)
        ok = last(sink, "load.ok")  # bytes decrypted per rank, audited
        assert ok["extra"]["bytes_decrypted"] == decrypted


def test_any_other_use_reads_the_whole_tensor_checked(
    tmp_path: Path, file_key: str, sign_keys
) -> None:
    ts = {"w": torch.randn(64, 32), "b": torch.randn(7)}
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys)
    with safe_open(art, policy=sign_keys.policy()) as f:
        lazy = dict(f.lazy_tensors())
        w = lazy["w"]
        assert isinstance(w, torch.Tensor) and w.shape == (64, 32) and w.dtype == torch.float32
        assert f.stats["records_read"] == 0  # nothing read for shape and dtype
        assert torch.equal(w.narrow(0, -8, 8), ts["w"][-8:])
        assert torch.equal(w.t().contiguous(), ts["w"].t())
        assert torch.equal(w * 2, ts["w"] * 2)
        assert type(w + 1) is torch.Tensor
        assert torch.equal(lazy["b"].to(torch.float64), ts["b"].double())
        assert "LazyTensor('w'" in repr(w)


def test_a_tampered_record_in_a_ranks_rows(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = {"w": torch.randn(256, 64)}  # 64 KiB: 16 records of 4 KiB
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys)
    flip(art, record_offset(art, 14) + 5)  # rows 208..224: rank 3 of 4
    audit, sink = memory_audit()
    with safe_open(art, policy=sign_keys.policy(), audit=audit) as f:
        w = dict(f.lazy_tensors())["w"]
        assert torch.equal(w.narrow(0, 0, 64), ts["w"][:64])  # rank 0 is unaffected
        with pytest.raises(IntegrityError, match="chunk digest does not match"):
            w.narrow(0, 192, 64)
    assert last(sink, "tamper.detected")["object"]["chunk"] == 14


def test_over_an_open_handle(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = {"w": torch.randn(64, 32)}
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys)
    audit, sink = memory_audit()
    with loader.open_model(art, policy=sign_keys.policy(), audit=audit) as handle:
        with SafeOpen.over(handle) as f:
            w = dict(f.lazy_tensors())["w"]
            assert torch.equal(w.narrow(0, 16, 16), ts["w"][16:32])
        assert events(sink)[-1] == "load.ok"  # the lazy reads' summary
        assert handle.keys() == ["w"]  # the handle stays open for its owner
        with pytest.raises(ConfigError, match="closed"):
            w.narrow(0, 0, 1)
