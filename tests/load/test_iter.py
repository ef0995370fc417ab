"""ModelHandle.iter_tensors (bounded batches) and verified side files (read_side_file)."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    encrypt,
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard import loader
from weightguard.errors import ConfigError, IntegrityError, SourceError
from weightguard.policy import UnsafeNoVerification


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    # The artifacts name the dev key file; the caller allows exactly that one (issue 12.2).
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.fixture
def release(tmp_path: Path, file_key: str, sign_keys) -> tuple[Path, dict[str, torch.Tensor]]:
    """Two encrypted shards, an index, config + tokenizer side files, signed."""
    d = tmp_path / "release"
    (d / "1_Pooling").mkdir(parents=True)
    expected: dict[str, torch.Tensor] = {}
    weight_map = {}
    for i in (1, 2):
        plain = tmp_path / f"p{i}.safetensors"
        layout = [(f"s{i}.{n}", dt, shape) for n, dt, shape in MODEL_LAYOUT]
        got = write_st(plain, layout, seed=i)
        expected |= got
        shard = f"model-0000{i}-of-00002.safetensors"
        encrypt(plain, d / shard, file_key, chunk_size=4096)
        weight_map |= dict.fromkeys(got, shard)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    sign(d, d / "model.sig", sign_keys)
    return d, expected


def test_iter_tensors_yields_every_tensor_in_bounded_batches(release, sign_keys) -> None:
    d, expected = release
    audit, sink = memory_audit()
    with loader.open_model(d, policy=sign_keys.policy(), audit=audit) as m:
        got = dict(m.iter_tensors(batch_bytes=8 * 1024))
    assert_same(got, expected)
    # each batch is one verified load: more than one per shard at 8 KiB, all ok
    oks = [r for r in sink.records if r.get("event") == "load.ok"]
    assert len(oks) > 2
    assert sum(r["tensors"] for r in (o["extra"] for o in oks)) == len(expected)
    assert "tamper.detected" not in events(sink)


def test_iter_tensors_holds_one_batch_at_a_time(release, sign_keys) -> None:
    d, expected = release
    with loader.open_model(d, policy=sign_keys.policy()) as m:
        it = m.iter_tensors(batch_bytes=1)  # every tensor a batch of its own
        loads: list[list[str]] = []
        real = m.load
        m.load = lambda names=None: (loads.append(sorted(names or [])), real(names))[1]  # type: ignore[method-assign]
        first_name, first = next(it)
        assert loads == [[first_name]]
        rest = dict(it)
    assert_same({first_name: first, **rest}, expected)
    assert len(loads) == len(expected)


def test_iter_tensors_subset_and_unknown_name(release, sign_keys) -> None:
    d, expected = release
    with loader.open_model(d, policy=sign_keys.policy()) as m:
        got = dict(m.iter_tensors(["s2.w.f32", "s1.ids"]))
        assert_same(got, {k: expected[k] for k in ("s2.w.f32", "s1.ids")})
        with pytest.raises(ConfigError, match="no tensor named 'nope'"):
            list(m.iter_tensors(["nope"]))
        with pytest.raises(ConfigError, match="batch_bytes must be positive"):
            list(m.iter_tensors(batch_bytes=0))


def test_iter_tensors_tampered_record_raises_from_the_iterator(release, sign_keys) -> None:
    d, _ = release
    shard = d / "model-00002-of-00002.safetensors"
    flip(shard, shard.stat().st_size - 20)
    audit, sink = memory_audit()
    with loader.open_model(d, policy=sign_keys.policy(), audit=audit) as m:
        seen = []
        with pytest.raises(IntegrityError, match=r"model-00002-of-00002\.safetensors"):
            for name, _t in m.iter_tensors():
                seen.append(name)
    assert all(n.startswith("s1.") for n in seen) and seen  # shard 1 came through verified
    assert last(sink, "tamper.detected")["outcome"] == "denied"


def test_side_files_are_the_signed_non_weight_files(release, sign_keys) -> None:
    d, _ = release
    with loader.open_model(d, policy=sign_keys.policy()) as m:
        assert m.side_files() == [
            "1_Pooling/config.json",
            "config.json",
            "model.safetensors.index.json",
            "tokenizer.json",
        ]
        assert m.read_side_file("config.json") == b'{"model_type": "bert"}'
        assert m.read_side_file("1_Pooling/config.json") == (b'{"pooling_mode_mean_tokens": true}')
        with pytest.raises(ConfigError, match=r"'model\.sig' is not a file of the model"):
            m.read_side_file("model.sig")
        with pytest.raises(ConfigError, match="not a file of the model"):
            m.read_side_file("model-00001-of-00002.safetensors")
        with pytest.raises(ConfigError, match="not a file of the model"):
            m.read_side_file("../p1.safetensors")
        with pytest.raises(SourceError, match="more than the 4 allowed"):
            m.read_side_file("config.json", limit=4)


def test_tampered_side_file_is_refused_and_audited(release, sign_keys) -> None:
    d, _ = release
    audit, sink = memory_audit()
    with loader.open_model(d, policy=sign_keys.policy(), audit=audit) as m:
        (d / "tokenizer.json").write_text('{"version": "2.0"}')  # same size, other bytes
        with pytest.raises(
            IntegrityError,
            match=r"differs from the signed sha256 digest \[.*/release/tokenizer\.json\]",
        ):
            m.read_side_file("tokenizer.json")
    ev = last(sink, "tamper.detected")
    assert ev["object"]["file"].endswith("/tokenizer.json")


def test_side_files_of_a_single_file_and_unsigned_unsafe(release, tmp_path) -> None:
    d, _ = release
    with loader.open_model(
        d / "model-00001-of-00002.safetensors", policy=UnsafeNoVerification()
    ) as m:
        assert m.side_files() == []
    (d / "model.sig").unlink()
    with loader.open_model(d, policy=UnsafeNoVerification()) as m:
        assert "config.json" in m.side_files()
        assert m.read_side_file("config.json") == b'{"model_type": "bert"}'
