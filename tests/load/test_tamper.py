"""Every tamper/failure case through load_file: typed error, audit event, nothing returned."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import fake_device  # noqa: F401 - registers device "fake"
from tests.support.load import (
    MODEL_LAYOUT,
    encrypt,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    other_keys,  # noqa: F401 - fixture
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
    zeros,
)
from weightguard import loader
from weightguard._internal.devices.observe import observing
from weightguard._internal.format import layout as fmt
from weightguard.errors import (
    IntegrityError,
    PolicyError,
    VerificationError,
    WeightguardError,
)
from weightguard.policy import UnsafeNoVerification

_PRE = len(fmt.MAGIC) + 4  # magic + header length

CHUNK = 4096


@pytest.fixture
def artifact(tmp_path: Path, file_key: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    # the caller allows this test key (the header's file:// reference alone is refused)
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)
    src = tmp_path / "plain.safetensors"
    write_st(src, MODEL_LAYOUT)
    d = tmp_path / "m"
    d.mkdir()
    enc = d / "model.safetensors"
    encrypt(src, enc, file_key, chunk_size=CHUNK)
    return enc


def _header(path: Path) -> fmt.ArtifactHeader:
    with open(path, "rb") as f:
        return fmt.read_header(f, path=str(path))


def _load(path: Path, policy, **kw):  # type: ignore[no-untyped-def]
    audit, sink = memory_audit()
    seen: list = []
    before = kw.pop("before_record", None)
    result = None
    try:
        with observing(before_record=before, on_copier=lambda c: seen.extend(c.staging_views())):
            result = loader.load_file(
                path,
                kw.pop("device", "fake"),
                policy=policy,
                audit=audit,
                workers=2,
                **kw,
            )
    except BaseException as exc:
        assert all(zeros(v) for v in seen), "staging memory not zero after failure"
        return exc, sink, result
    raise AssertionError("load succeeded")


def _assert_denied(exc, sink, event: str, cls: type, text: str) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(exc, cls), repr(exc)
    assert text in str(exc), str(exc)
    rec = last(sink, event)
    assert rec["outcome"] == "denied"
    assert "load.ok" not in [r.get("event") for r in sink.records]


def _resign(enc: Path, keys) -> Path:  # type: ignore[no-untyped-def]
    sig = enc.with_name(enc.name + ".sig")
    sign(enc, sig, keys)
    return sig


def _mutate_record(enc: Path, index: int, how: str) -> None:
    h = _header(enc)
    data = bytearray(enc.read_bytes())
    off, n = h.record_span(index)
    if how == "flip-body":
        data[off + n // 2] ^= 1
    elif how == "flip-tag":
        data[off + n - 1] ^= 1
    elif how == "swap":  # reorder chunks 1 and 2
        o2, n2 = h.record_span(index + 1)
        assert n == n2
        data[off : off + n], data[o2 : o2 + n2] = data[o2 : o2 + n2], data[off : off + n]
    elif how == "duplicate":  # chunk 2 replaced by a copy of chunk 1
        o2, n2 = h.record_span(index + 1)
        data[o2 : o2 + n2] = data[off : off + n]
    elif how == "truncate":
        del data[off:]
    enc.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip-body", "flip-tag", "swap", "duplicate", "truncate"])
@pytest.mark.parametrize("signed_after", [False, True])
def test_tampered_chunk(artifact, sign_keys, how, signed_after) -> None:
    """Tampering before signing (signature matches, AEAD catches it) and after signing."""
    if not signed_after:
        _mutate_record(artifact, 2, how)
        _resign(artifact, sign_keys)
    else:
        _resign(artifact, sign_keys)
        _mutate_record(artifact, 2, how)
    exc, sink, result = _load(artifact, sign_keys.policy())
    assert result is None
    assert isinstance(exc, IntegrityError), repr(exc)
    assert str(artifact) in str(exc)
    if how != "truncate":
        want = {"swap": {2, 3}, "duplicate": {3}}.get(how, {2})
        assert exc.chunk in want
        _assert_denied(exc, sink, "tamper.detected", IntegrityError, f"chunk {exc.chunk}")
        assert last(sink, "tamper.detected")["object"]["chunk"] == exc.chunk
    else:
        assert last(sink, "tamper.detected")


@pytest.mark.parametrize("where", ["magic", "header-json", "mac", "record0"])
def test_tampered_header(artifact, sign_keys, where) -> None:
    h = _header(artifact)
    _resign(artifact, sign_keys)
    offsets = {
        "magic": 2,
        "header-json": _PRE + len(h.raw) // 2,
        "mac": _PRE + len(h.raw) + 3,
        "record0": h.preamble_size + 5,
    }
    flip(artifact, offsets[where])
    exc, sink, _ = _load(artifact, sign_keys.policy())
    _assert_denied(exc, sink, "tamper.detected", IntegrityError, "chunk 0")


@pytest.mark.parametrize("where", ["header-json", "mac", "record0", "tag"])
def test_tampered_header_unsigned_is_caught_by_aead(artifact, where) -> None:
    h = _header(artifact)
    off0, n0 = h.record_span(0)
    offsets = {
        "header-json": _PRE + len(h.raw) - 5,
        "mac": _PRE + len(h.raw) + 3,
        "record0": off0 + 3,
        "tag": off0 + n0 - 1,
    }
    flip(artifact, offsets[where])
    exc, sink, _ = _load(artifact, UnsafeNoVerification())
    assert isinstance(exc, WeightguardError), repr(exc)
    assert not isinstance(exc, AssertionError)
    denied = [r for r in sink.records if r.get("outcome") == "denied"]
    assert denied, "no denial event"


def test_wrong_signer(artifact, sign_keys, other_keys) -> None:
    _resign(artifact, other_keys)
    exc, sink, _ = _load(artifact, sign_keys.policy())
    _assert_denied(exc, sink, "load.denied", PolicyError, "does not satisfy the policy")


def test_plain_signed_flipped_data_byte(tmp_path, sign_keys) -> None:
    p = tmp_path / "model.safetensors"
    write_st(p, MODEL_LAYOUT)
    sign(p, p.with_name("model.safetensors.sig"), sign_keys, chunk_size=CHUNK)
    n = int.from_bytes(p.read_bytes()[:8], "little")
    flip(p, 8 + n + CHUNK + 7)  # data chunk 2
    exc, sink, _ = _load(p, sign_keys.policy(), device="cpu")
    _assert_denied(exc, sink, "tamper.detected", IntegrityError, "chunk 2")


def test_plain_signed_flipped_header_byte(tmp_path, sign_keys) -> None:
    p = tmp_path / "model.safetensors"
    write_st(p, MODEL_LAYOUT)
    sign(p, p.with_name("model.safetensors.sig"), sign_keys, chunk_size=CHUNK)
    data = p.read_bytes()
    p.write_bytes(data.replace(b'"F16"', b'"I16"', 1))  # dtype rewrite, same length
    exc, sink, _ = _load(p, sign_keys.policy(), device="cpu")
    _assert_denied(exc, sink, "tamper.detected", IntegrityError, "header bytes do not match")


def test_artifact_from_other_model_swapped_in(tmp_path, artifact, file_key, sign_keys) -> None:
    _resign(artifact, sign_keys)
    other = tmp_path / "other.safetensors"
    write_st(other, MODEL_LAYOUT, seed=5)
    encrypt(other, tmp_path / "other.enc", file_key, chunk_size=CHUNK)
    shutil.copy(tmp_path / "other.enc", artifact)
    exc, sink, _ = _load(artifact, sign_keys.policy())
    _assert_denied(exc, sink, "tamper.detected", IntegrityError, "chunk 0")


def test_keyboard_interrupt_mid_load(artifact, sign_keys) -> None:
    _resign(artifact, sign_keys)
    calls = []

    def hook(name: str, index: int) -> None:
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt

    exc, sink, result = _load(artifact, sign_keys.policy(), before_record=hook)
    assert isinstance(exc, KeyboardInterrupt)
    assert result is None
    assert last(sink, "load.denied")["reason"] == "cancelled (KeyboardInterrupt)"


def test_missing_signature_and_wrong_key(artifact, sign_keys, tmp_path) -> None:
    exc, sink, _ = _load(artifact, sign_keys.policy())
    _assert_denied(exc, sink, "load.denied", VerificationError, "no signature found")
    from weightguard._internal.keys.providers import create_key_file
    from weightguard.errors import KeyProviderError

    other = create_key_file(tmp_path / "other.kek")
    exc, sink, _ = _load(artifact, UnsafeNoVerification(), data_key=f"file://{other}")
    _assert_denied(exc, sink, "load.denied", KeyProviderError, "")
