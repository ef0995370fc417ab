"""Secure loading to CPU: plain signed, encrypted, subsets, shards, load_model."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.support import fake_device  # noqa: F401 - registers device "fake"
from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    encrypt,
    events,
    file_key,  # noqa: F401 - fixture
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
    zeros,
)
from weightguard import loader
from weightguard._internal.devices.observe import observing
from weightguard.errors import ConfigError, UnsafeOptionRequired
from weightguard.policy import UnsafeNoVerification


@pytest.fixture
def plain(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    p = tmp_path / "model.safetensors"
    return p, write_st(p, MODEL_LAYOUT)


def test_plain_signed_safetensors_matches_safetensors(plain, sign_keys) -> None:
    path, expected = plain
    sign(path, path.with_name("model.safetensors.sig"), sign_keys, chunk_size=4096)
    audit, sink = memory_audit()
    got = loader.load_file(path, policy=sign_keys.policy(), audit=audit, workers=2)
    assert_same(got, expected)
    from safetensors.torch import load_file as st_load

    ref = st_load(str(path))
    assert_same(got, ref)
    assert events(sink) == ["load.start", "verify.ok", "load.ok"]
    ok = last(sink, "load.ok")
    assert ok["object"]["signer"] and ok["object"]["digest"]
    assert ok["bytes"] == path.stat().st_size - (
        8 + int.from_bytes(path.read_bytes()[:8], "little")
    )
    assert ok["object"]["device"] == "cpu"


@pytest.mark.parametrize("header_encrypted", [False, True])
@pytest.mark.parametrize("device", ["cpu", "fake"])
def test_encrypted_signed_roundtrip(
    tmp_path, plain, file_key, sign_keys, header_encrypted, device
) -> None:
    src, expected = plain
    enc = tmp_path / "enc" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key + "?quiet" if False else file_key, header_encrypted=header_encrypted)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    audit, sink = memory_audit()
    seen = []
    with observing(on_copier=lambda c: seen.extend(c.staging_views())):
        got = loader.load_file(
            enc,
            device,
            policy=sign_keys.policy(),
            data_key=file_key,
            audit=audit,
            workers=3,
            ring_bytes=3 * 4096,
        )
    assert_same(got, expected)
    assert events(sink) == ["load.start", "verify.ok", "key.unwrap", "load.ok"]
    unwrap = last(sink, "key.unwrap")
    assert unwrap["object"]["key_id"] == file_key
    assert unwrap["extra"]["round_trips"] == 1
    if device == "fake":
        assert seen and all(zeros(v) for v in seen)  # staging ring zero after the load


def test_policy_is_required(plain) -> None:
    path, _ = plain
    audit, _sink = memory_audit()
    with pytest.raises(UnsafeOptionRequired, match="verification policy is required"):
        loader.load_file(path, policy=None, audit=audit)


def test_unsigned_plain_needs_unsafe_policy(plain, sign_keys) -> None:
    path, expected = plain
    audit, sink = memory_audit()
    from weightguard.errors import VerificationError

    with pytest.raises(VerificationError, match="no signature found"):
        loader.load_file(path, policy=sign_keys.policy(), audit=audit)
    assert last(sink, "load.denied")["outcome"] == "denied"
    got = loader.load_file(path, policy=UnsafeNoVerification(), audit=audit)
    assert_same(got, expected)


def test_subset_reads_only_touched_chunks(tmp_path, file_key, sign_keys) -> None:
    src = tmp_path / "big.safetensors"
    layout = [(f"layer{i}.w", "F32", (64, 64)) for i in range(16)]  # 16 KiB each
    expected = write_st(src, layout)
    enc = tmp_path / "m" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key, chunk_size=4096)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    audit, sink = memory_audit()
    with loader.open_model(enc, policy=sign_keys.policy(), audit=audit, data_key=file_key) as m:
        assert m.keys() == sorted(expected)
        part = m.load(["layer3.w", "layer9.w"])
        assert set(part) == {"layer3.w", "layer9.w"}
        assert torch.equal(part["layer3.w"], expected["layer3.w"])
        assert torch.equal(part["layer9.w"], expected["layer9.w"])
        ok = last(sink, "load.ok")
        assert ok["bytes"] <= 2 * (16384 + 2 * 4096 + 64)  # a few chunks, not 256 KiB
        with pytest.raises(ConfigError, match="no tensor named 'nope'"):
            m.load(["nope"])
    assert events(sink).count("key.unwrap") == 1


def _shard(tmp_path: Path, file_key: str) -> tuple[Path, dict[str, torch.Tensor]]:
    d = tmp_path / "sharded"
    d.mkdir()
    e1 = write_st(
        tmp_path / "s1.safetensors", [("a.weight", "F32", (8, 4)), ("a.bias", "F32", (8,))], 1
    )
    e2 = write_st(
        tmp_path / "s2.safetensors", [("b.weight", "F32", (3, 8)), ("b.bias", "F32", (3,))], 2
    )
    encrypt(tmp_path / "s1.safetensors", d / "model-00001-of-00002.safetensors", file_key)
    encrypt(tmp_path / "s2.safetensors", d / "model-00002-of-00002.safetensors", file_key)
    wm = {k: "model-00001-of-00002.safetensors" for k in e1} | {
        k: "model-00002-of-00002.safetensors" for k in e2
    }
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (d / "config.json").write_text("{}")
    return d, e1 | e2


def test_sharded_dir_load_model(tmp_path, file_key, sign_keys) -> None:
    d, expected = _shard(tmp_path, file_key)
    sign(d, d / "model.sig", sign_keys)
    module = torch.nn.Sequential()
    module.add_module("a", torch.nn.Linear(4, 8))
    module.add_module("b", torch.nn.Linear(8, 3))
    # Sequential names are "a.weight" etc. via add_module names
    audit, sink = memory_audit()
    loader.load_model(module, d, policy=sign_keys.policy(), audit=audit, allow_key=file_key)
    assert torch.equal(module.a.weight.detach(), expected["a.weight"])
    assert torch.equal(module.b.bias.detach(), expected["b.bias"])
    unwrap = last(sink, "key.unwrap")
    assert unwrap["extra"] == {"files": 2, "round_trips": 1}
    wrong = torch.nn.Linear(2, 2)
    from weightguard.errors import FormatError

    with pytest.raises(FormatError, match="tensors do not match the module"):
        loader.load_model(wrong, d, policy=sign_keys.policy(), audit=audit, data_key=file_key)


def test_shard_not_covered_by_signature(tmp_path, file_key, sign_keys) -> None:
    d, _ = _shard(tmp_path, file_key)
    sign(d, d / "model.sig", sign_keys)
    shutil.copy(d / "model-00002-of-00002.safetensors", d / "model-00003-of-00002.safetensors")
    audit, sink = memory_audit()
    from weightguard.errors import CoverageError

    with pytest.raises(CoverageError, match=r"model-00003-of-00002\.safetensors"):
        loader.load_file(d, policy=sign_keys.policy(), audit=audit)
    assert last(sink, "load.denied")["reason"].startswith("CoverageError")


def test_populate_for_write_prefaults_without_changing_bytes() -> None:
    """The destination pre-fault is a pure hint: bytes written after it are intact."""
    import torch

    from weightguard._internal.load import copiers as load_copy

    t = torch.empty(1 << 20, dtype=torch.uint8)
    load_copy.populate_for_write(int(t.data_ptr()) + 123, (1 << 20) - 123)
    view = load_copy._np_view(t)
    view[:] = bytes(range(256)) * 4096
    assert bytes(view[:512]) == bytes(range(256)) * 2
    import os

    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) >= (5, 14):  # MADV_POPULATE_WRITE exists: the hint was accepted
        assert load_copy._populate_ok
