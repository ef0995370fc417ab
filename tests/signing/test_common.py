"""Shared helpers for the signing tests (keys, CA chains, models) + basic round trips."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.signing import (
    make_model,
    model_signing,
    payload_of,
    write_key,
)


@pytest.mark.parametrize("algorithm", [None, "blake3-chunked-v1", "sha256-chunked-v1"])
def test_sign_verify_roundtrip_records_chunk_digests(tmp_path: Path, algorithm: str | None) -> None:
    import blake3

    from weightguard.policy import PublicKey
    from weightguard.signing import KeySigner, sign_model, verify_bundle

    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k")
    kw = {} if algorithm is None else {"chunk_algorithm": algorithm}
    res = sign_model(
        model, tmp_path / "m.sig", KeySigner.from_file(tmp_path / "k.pem"), chunk_size=4096, **kw
    )
    algorithm = algorithm or "blake3-chunked-v1"  # the default
    h = blake3.blake3 if algorithm.startswith("blake3") else hashlib.sha256
    m = verify_bundle(model, tmp_path / "m.sig", PublicKey.from_file(tmp_path / "k.pub"))
    assert sorted(m.files) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert m.uncovered == ()
    assert m.hashed and m.kind == "key" and not m.unsafe
    assert "EC P-256 key sha256:" in m.signer
    f = m.files["model.safetensors"]
    data = (model / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert (f.size, f.head, f.stride) == (len(data), 8 + n, 4096)
    assert f.algorithm == algorithm
    assert f.digests[0] == h(data[: 8 + n]).digest()
    for k in range(1, len(f.digests)):
        off, length = f.range(k)
        assert f.digests[k] == h(data[off : off + length]).digest()
    assert f.sha256 == hashlib.sha256(data).digest()  # OMS resource digest: SHA-256 always
    cfg = m.files["config.json"]
    cfg_bytes = (model / "config.json").read_bytes()
    assert cfg.head == cfg.size and cfg.digests == (h(cfg_bytes).digest(),)
    assert cfg.sha256 == hashlib.sha256(cfg_bytes).digest()
    assert res.files["model.safetensors"].digests == f.digests
    # the predicate extension is exactly as documented in docs/ARCHITECTURE.md
    wg = payload_of(tmp_path / "m.sig")["predicate"]["weightguard"]
    assert wg["version"] and set(wg["files"]["model.safetensors"]) == {
        "algorithm",
        "size",
        "head",
        "stride",
        "digests",
    }
    assert wg["files"]["model.safetensors"]["algorithm"] == algorithm
    assert m.to_dict()["files"]["model.safetensors"]["algorithm"] == algorithm


@pytest.mark.parametrize("curve", ["p256", "p384", "p521"])
def test_single_file_all_curves_and_password(tmp_path: Path, curve: str) -> None:
    from weightguard.policy import PublicKey
    from weightguard.signing import KeySigner, sign_model, verify_bundle

    make_model(tmp_path / "m")
    single = tmp_path / "m" / "model.safetensors"
    write_key(tmp_path, "k", curve, password=b"s3cret")
    sign_model(single, tmp_path / "w.sig", KeySigner.from_file(tmp_path / "k.pem", "s3cret"))
    m = verify_bundle(single, tmp_path / "w.sig", PublicKey.from_file(tmp_path / "k.pub"))
    assert list(m.files) == ["."]
    assert m.path_of(".") == single
    assert payload_of(tmp_path / "w.sig")["predicate"]["resources"][0]["name"] == "."
    r = model_signing(
        "verify",
        "key",
        str(single),
        "--signature",
        str(tmp_path / "w.sig"),
        "--public_key",
        str(tmp_path / "k.pub"),
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_wrong_password_and_missing_password(tmp_path: Path) -> None:
    from weightguard.errors import ConfigError
    from weightguard.signing import KeySigner

    write_key(tmp_path, "k", password=b"right")
    with pytest.raises(ConfigError, match="wrong password"):
        KeySigner.from_file(tmp_path / "k.pem", "wrong")
    with pytest.raises(ConfigError, match="encrypted and no password"):
        KeySigner.from_file(tmp_path / "k.pem")


def test_signer_repr_hides_key(tmp_path: Path) -> None:
    from weightguard.signing import KeySigner

    write_key(tmp_path, "k")
    s = KeySigner.from_file(tmp_path / "k.pem")
    assert "PRIVATE" not in repr(s) and "sha256:" in repr(s)


def test_hash_files_false_checks_listing_and_sizes_only(tmp_path: Path) -> None:
    from weightguard.errors import IntegrityError
    from weightguard.policy import PublicKey
    from weightguard.signing import KeySigner, sign_model, verify_bundle

    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k")
    sign_model(model, tmp_path / "m.sig", KeySigner.from_file(tmp_path / "k.pem"))
    pol = PublicKey.from_file(tmp_path / "k.pub")
    p = model / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    m = verify_bundle(model, tmp_path / "m.sig", pol, hash_files=False)
    assert not m.hashed  # same size: only the streaming loader can see the change
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        verify_bundle(model, tmp_path / "m.sig", pol)
    p.write_bytes(bytes(data) + b"x")
    with pytest.raises(IntegrityError, match="signed size"):
        verify_bundle(model, tmp_path / "m.sig", pol, hash_files=False)


def test_audit_events(tmp_path: Path) -> None:
    from weightguard.errors import PolicyError
    from weightguard.policy import PublicKey
    from weightguard.signing import KeySigner, sign_model, verify_bundle

    events: list[tuple[str, dict[str, Any]]] = []

    class Rec:
        def emit(self, event: str, **kw: Any) -> None:
            events.append((event, kw))

    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k")
    write_key(tmp_path, "other")
    sign_model(model, tmp_path / "m.sig", KeySigner.from_file(tmp_path / "k.pem"), audit=Rec())
    verify_bundle(model, tmp_path / "m.sig", PublicKey.from_file(tmp_path / "k.pub"), audit=Rec())
    with pytest.raises(PolicyError):
        verify_bundle(
            model, tmp_path / "m.sig", PublicKey.from_file(tmp_path / "other.pub"), audit=Rec()
        )
    assert [e for e, _ in events] == ["sign", "verify.ok", "verify.failed"]
    assert events[2][1]["outcome"] == "denied"
    for _, fields in events[:2]:  # audit schema: what was touched, by which signer
        assert fields["object"]["uri"] == str(model) and fields["object"]["signer"]
        assert fields["object"]["digest"]
    assert "signed with another key" in events[2][1]["reason"]
    assert os.fspath(tmp_path / "k.pem") not in json.dumps([e[1] for e in events], default=str)
