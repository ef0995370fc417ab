"""The opt-in safetensors drop-in: unmodified safetensors callers load weightguard releases."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from tests.support.lazy import release_dir, release_file, tensors
from tests.support.load import (
    assert_same,
    events,
    file_key,  # noqa: F401 - fixture
    last,
    memory_audit,
    other_keys,  # noqa: F401 - fixture
    sign_keys,  # noqa: F401 - fixture
)
from weightguard.errors import KeyAccessDenied, PolicyError, VerificationError
from weightguard.integrations import safetensors as dropin
from weightguard.policy import UnsafeNoVerification

# In a tuple: the drop-in replaces module-level names bound to safetensors' functions.
ORIGINALS = (safetensors.safe_open, safetensors.torch.load_file)


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.fixture(autouse=True)
def _always_off() -> None:
    yield
    dropin.disable()
    assert safetensors.safe_open is ORIGINALS[0]
    assert safetensors.torch.load_file is ORIGINALS[1]


@pytest.fixture
def art(tmp_path: Path, file_key: str, sign_keys) -> Path:
    ts = tensors()
    return release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys)[0]


def test_off_by_default_artifacts_fail_fast_in_safetensors(art: Path) -> None:
    assert not dropin.is_enabled()
    with pytest.raises(safetensors.SafetensorError):
        safetensors.safe_open(str(art), "pt")


def test_names_bound_before_enable_are_replaced_and_restored(art: Path, sign_keys) -> None:
    # a library that did `from safetensors import safe_open` at import time
    lib = types.ModuleType("wg_test_lib")
    lib.safe_open = safetensors.safe_open  # type: ignore[attr-defined]
    lib.safe_load_file = safetensors.torch.load_file  # type: ignore[attr-defined]
    sys.modules["wg_test_lib"] = lib
    try:
        audit, sink = memory_audit()
        with dropin.enabled(sign_keys.policy(), audit=audit):
            assert lib.safe_open is not ORIGINALS[0]
            with lib.safe_open(str(art), framework="pt", device="cpu", backend="mmap") as f:
                assert f.keys() == sorted(tensors())
                assert torch.equal(f.get_slice("embed.weight")[3:5], tensors()["embed.weight"][3:5])
            assert_same(lib.safe_load_file(str(art)), tensors())
        assert lib.safe_open is ORIGINALS[0]
        assert lib.safe_load_file is ORIGINALS[1]
        assert events(sink).count("verify.ok") == 2
        assert last(sink, "load.ok")["object"]["signer"]
    finally:
        del sys.modules["wg_test_lib"]


def test_a_shard_of_a_signed_directory(tmp_path: Path, file_key: str, sign_keys) -> None:
    d, expected = release_dir(tmp_path / "rel", file_key, sign_keys)
    with dropin.enabled(sign_keys.policy()):
        got = safetensors.torch.load_file(str(d / "model-00001-of-00002.safetensors"))
    assert_same(got, {k: v for k, v in expected.items() if k.startswith("s1.")})


def test_plain_files(tmp_path: Path, sign_keys) -> None:
    ts = tensors()
    signed, _ = release_file(tmp_path / "a", "m.safetensors", ts, key=None, keys=sign_keys)
    unsigned, _ = release_file(tmp_path / "b", "m.safetensors", ts, key=None, keys=None)
    audit, sink = memory_audit()
    with dropin.enabled(sign_keys.policy(), audit=audit):
        # signed plain file: verified by weightguard
        assert_same(safetensors.torch.load_file(str(signed)), ts)
        assert "verify.ok" in events(sink)
        # unsigned plain file where the policy requires a signature: refused, audited
        with pytest.raises(VerificationError, match="plain safetensors file without a signature"):
            safetensors.safe_open(str(unsigned), "pt")
        rec = last(sink, "load.denied")
        assert rec["object"]["uri"] == str(unsigned)
    n = len(sink.records)
    # the caller may let unsigned plain files through unchanged
    with dropin.enabled(sign_keys.policy(), audit=audit, allow_unsigned_plain=True):
        with safetensors.safe_open(str(unsigned), "pt") as f:
            assert type(f) is type(ORIGINALS[0](str(unsigned), "pt"))
        assert_same(safetensors.torch.load_file(str(unsigned)), ts)
    with dropin.enabled(UnsafeNoVerification(), audit=audit):
        assert_same(safetensors.torch.load_file(str(unsigned)), ts)
    assert len(sink.records) == n  # plain files passed through: no weightguard events


def test_an_unsigned_artifact(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = tensors()
    unsigned, _ = release_file(tmp_path / "a", "m.safetensors", ts, key=file_key, keys=None)
    audit, sink = memory_audit()
    with dropin.enabled(sign_keys.policy(), audit=audit):
        with pytest.raises(VerificationError, match="encrypted weightguard artifact without a sig"):
            safetensors.torch.load_file(str(unsigned))
        assert last(sink, "load.denied")["object"]["uri"] == str(unsigned)
    with dropin.enabled(UnsafeNoVerification()):  # AEAD only, by the caller's choice
        assert_same(safetensors.torch.load_file(str(unsigned)), ts)


def test_an_artifact_whose_policy_the_dropin_cannot_satisfy(
    art: Path, sign_keys, other_keys, file_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit, sink = memory_audit()
    with (
        dropin.enabled(other_keys.policy(), audit=audit),  # signed by someone else
        pytest.raises(PolicyError),
    ):
        safetensors.safe_open(str(art), "pt")
    assert last(sink, "load.denied")["reason"].startswith("PolicyError")
    monkeypatch.delenv("WEIGHTGUARD_ALLOW_KEY")
    with (
        dropin.enabled(sign_keys.policy(), audit=audit, allow_key=["vault://transit/*"]),
        pytest.raises(KeyAccessDenied),
    ):
        safetensors.torch.load_file(str(art))
    assert last(sink, "load.denied")["reason"].startswith("KeyAccessDenied")


def test_transformers_from_pretrained_unmodified(tmp_path: Path, file_key: str, sign_keys) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.load import encrypt, sign

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    plain = tmp_path / "plain"
    LlamaForCausalLM(cfg).save_pretrained(plain)
    rel = tmp_path / "rel"
    rel.mkdir()
    for p in plain.iterdir():
        if p.suffix == ".safetensors":
            encrypt(p, rel / p.name, file_key)
        else:
            (rel / p.name).write_bytes(p.read_bytes())
    sign(rel, rel / "model.sig", sign_keys)
    ids = torch.arange(10).unsqueeze(0)
    want = LlamaForCausalLM.from_pretrained(plain).eval()(ids).logits
    with dropin.enabled(sign_keys.policy()):
        got = LlamaForCausalLM.from_pretrained(rel).eval()(ids).logits
    assert torch.equal(got, want)
