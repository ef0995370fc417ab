"""Chunk digest algorithms: blake3-chunked-v1 (default) and sha256-chunked-v1.

Sign + verify + secure load round trips with both, tamper detection with both, unknown
algorithms refused (naming file and algorithm), and golden BLAKE3 digests.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

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
from tests.support.signing import payload_of
from weightguard import loader
from weightguard._internal.format import layout as fmt
from weightguard._internal.signing.hashing import (
    BLAKE3_CHUNKED,
    CHUNK_ALGORITHMS,
    DEFAULT_CHUNK_ALGORITHM,
    SHA256_CHUNKED,
    HashJob,
    chunk_digest,
    chunk_hasher,
    hash_chunks,
    hash_files,
)
from weightguard.errors import ConfigError, FormatError, IntegrityError


@pytest.fixture(autouse=True)
def _allow_test_key(file_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller names the test key file (a header's file:// reference alone is refused)."""
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


ALGORITHMS = [BLAKE3_CHUNKED, SHA256_CHUNKED]
CHUNK = 4096


def _algorithms_of(sig: Path) -> set[str]:
    files = payload_of(sig)["predicate"]["weightguard"]["files"]
    return {f["algorithm"] for f in files.values()}


# --------------------------------------------------------------------------- golden


def test_golden_blake3_digests() -> None:
    # Official BLAKE3 vectors (empty input; "abc").
    assert chunk_digest(BLAKE3_CHUNKED, b"").hex() == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )
    assert chunk_digest(BLAKE3_CHUNKED, b"abc").hex() == (
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    )
    # BLAKE3 test-vector input (bytes i % 251), 1025 bytes: crosses the 1 KiB chunk size.
    data = bytes(i % 251 for i in range(1025))
    assert chunk_digest(BLAKE3_CHUNKED, memoryview(data)).hex() == (
        "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"
    )
    assert chunk_digest(SHA256_CHUNKED, b"abc") == hashlib.sha256(b"abc").digest()


def test_golden_file_digests_one_pass(tmp_path: Path) -> None:
    """hash_files / hash_chunks produce the pinned per-range BLAKE3 digests."""
    data = bytes(i % 251 for i in range(3 * 4096 + 100))
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    job = HashJob("f.bin", str(p), len(data), 100, 4096, BLAKE3_CHUNKED)
    want = [data[:100]] + [data[o : o + 4096] for o in range(100, len(data), 4096)]
    got = hash_files([job])["f.bin"]
    assert got.sha256 == hashlib.sha256(data).digest()  # whole file: SHA-256 (OMS)
    assert got.digests == tuple(chunk_digest(BLAKE3_CHUNKED, w) for w in want)
    assert hash_chunks([job])["f.bin"].digests == got.digests
    assert got.digests[0].hex() == (
        "8e2eb1bba3040b8f611a1240a0e111c74b45cfc9caed10b95f6372db1c40b8b5"
    )


def test_default_is_blake3_and_public_constants_agree() -> None:
    from weightguard import signing

    assert DEFAULT_CHUNK_ALGORITHM == signing.DEFAULT_CHUNK_ALGORITHM == BLAKE3_CHUNKED
    assert tuple(CHUNK_ALGORITHMS) == tuple(signing.CHUNK_ALGORITHMS)


def test_chunk_hasher_refuses_unknown_algorithm() -> None:
    with pytest.raises(ConfigError) as ei:
        chunk_hasher("md5-chunked-v1", path="model.safetensors")
    msg = str(ei.value)
    assert "model.safetensors" in msg and "md5-chunked-v1" in msg
    assert "blake3-chunked-v1" in msg  # says what is supported


# --------------------------------------------------------------------------- sign/verify


def test_sign_model_refuses_unknown_algorithm(tmp_path: Path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "model.safetensors"
    write_st(p, MODEL_LAYOUT)
    with pytest.raises(ConfigError, match="unknown chunk digest algorithm 'crc32'"):
        sign(p, tmp_path / "m.sig", sign_keys, chunk_algorithm="crc32")
    assert not (tmp_path / "m.sig").exists()


def _forge(tmp_path: Path, model: Path, sig: Path, sign_keys, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    """A correctly signed bundle whose chunk record names ``algorithm``."""
    from weightguard._internal.signing import oms

    sign(model, sig, sign_keys)
    wg = payload_of(sig)["predicate"]["weightguard"]["files"]["."]
    rec = oms.ChunkRecord(
        size=wg["size"],
        head=wg["head"],
        stride=wg["stride"],
        digests=tuple(bytes.fromhex(d) for d in wg["digests"]),
        algorithm=algorithm,
    )
    payload = oms.build_statement(
        model.name,
        {".": hashlib.sha256(model.read_bytes()).digest()},
        allow_symlinks=False,
        ignore_paths=[],
        chunks={".": rec},
        version="0.1.0",
        signed_at=None,
    )
    sig.write_bytes(sign_keys.signer().make_bundle(payload))


def test_unknown_algorithm_in_signed_record_refused(tmp_path: Path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    from weightguard.signing import verify_bundle

    p = tmp_path / "model.safetensors"
    write_st(p, MODEL_LAYOUT)
    sig = tmp_path / "model.safetensors.sig"
    _forge(tmp_path, p, sig, sign_keys, "sha1-chunked-v1")
    with pytest.raises(FormatError) as ei:
        verify_bundle(p, sig, sign_keys.policy())
    msg = str(ei.value)
    assert "sha1-chunked-v1" in msg and "'.'" in msg and "unknown chunk digest algorithm" in msg
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match="unknown chunk digest algorithm 'sha1-chunked-v1'"):
        loader.load_file(p, policy=sign_keys.policy(), audit=audit, workers=2)
    assert last(sink, "load.denied")["outcome"] == "denied"
    assert "load.ok" not in events(sink)


# --------------------------------------------------------------------------- load


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_plain_sign_load_roundtrip(tmp_path: Path, sign_keys, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "model.safetensors"
    expected = write_st(p, MODEL_LAYOUT)
    sig = p.with_name("model.safetensors.sig")
    sign(p, sig, sign_keys, chunk_size=CHUNK, chunk_algorithm=algorithm)
    assert _algorithms_of(sig) == {algorithm}
    audit, sink = memory_audit()
    got = loader.load_file(p, policy=sign_keys.policy(), audit=audit, workers=2)
    assert_same(got, expected)
    assert events(sink) == ["load.start", "verify.ok", "load.ok"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_encrypted_dir_sign_load_fetch_roundtrip(  # type: ignore[no-untyped-def]
    tmp_path: Path, file_key, sign_keys, algorithm: str
) -> None:
    from weightguard.transfer import fetch_model

    src = tmp_path / "plain.safetensors"
    expected = write_st(src, MODEL_LAYOUT)
    d = tmp_path / "enc"
    d.mkdir()
    encrypt(src, d / "model.safetensors", file_key, chunk_size=CHUNK)
    (d / "config.json").write_text(json.dumps({"hidden": 64}))
    sign(d, d / "model.sig", sign_keys, chunk_algorithm=algorithm)
    assert _algorithms_of(d / "model.sig") == {algorithm}
    audit, sink = memory_audit()
    got = loader.load_file(d, policy=sign_keys.policy(), audit=audit, workers=3)
    assert_same(got, expected)
    assert events(sink) == ["load.start", "verify.ok", "key.unwrap", "load.ok"]
    # fetch (FileCopier path) checks the same records with the same algorithm
    out = tmp_path / "out"
    fetch_model(d, out, policy=sign_keys.policy(), allow_disk=True, audit=memory_audit()[0])
    assert (out / "model.safetensors").read_bytes() == src.read_bytes()
    assert json.loads((out / "config.json").read_text()) == {"hidden": 64}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("where", ["head", "chunk"])
def test_tamper_detected(tmp_path: Path, file_key, sign_keys, algorithm: str, where: str) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "plain.safetensors"
    write_st(src, MODEL_LAYOUT)
    enc = tmp_path / "m" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key, chunk_size=CHUNK)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys, chunk_algorithm=algorithm)
    with open(enc, "rb") as f:
        hdr = fmt.read_header(f, path=str(enc))
    off, _ = hdr.record_span(2) if where == "chunk" else (hdr.data_offset - 20, 0)
    flip(enc, off + 5)
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError) as ei:
        loader.load_file(enc, policy=sign_keys.policy(), audit=audit, workers=2)
    if where == "chunk":
        assert ei.value.chunk == 2
        assert "chunk digest does not match the signed digest" in str(ei.value)
    else:
        assert "do not match the signed digest" in str(ei.value)
    assert last(sink, "tamper.detected")["outcome"] == "denied"
    assert "load.ok" not in events(sink)
    # full verification (hash_files=True) catches it by the resource digest, and by the
    # chunk digest (the same algorithm) with check_chunk_digests=True
    from weightguard.signing import verify_bundle

    sig = enc.with_name("model.safetensors.sig")
    with pytest.raises(IntegrityError, match="content differs from the signed SHA256 digest"):
        verify_bundle(enc, sig, sign_keys.policy())
    with pytest.raises(IntegrityError, match="content differs from the signed digest") as ei:
        verify_bundle(enc, sig, sign_keys.policy(), check_chunk_digests=True)
    assert ei.value.chunk == (2 if where == "chunk" else 0)


@pytest.mark.parametrize("choice", ["blake3", "sha256"])
def test_cli_chunk_digest_option(tmp_path: Path, sign_keys, choice: str) -> None:  # type: ignore[no-untyped-def]
    from weightguard_cli.main import cli

    d = tmp_path / "m"
    d.mkdir()
    write_st(d / "model.safetensors", MODEL_LAYOUT)
    sig = tmp_path / "m.sig"
    args = ["sign", str(d), "--signature", str(sig), "--signing-key", str(sign_keys.private)]
    args += ["--chunk-digest", choice, "--json", "--audit-log", str(tmp_path / "a.jsonl")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["chunk_algorithm"] == f"{choice}-chunked-v1"
    assert _algorithms_of(sig) == {f"{choice}-chunked-v1"}
    bad = CliRunner().invoke(cli, [*args[:6], "--chunk-digest", "md5"])
    assert bad.exit_code == 2 and "md5" in bad.output
    shutil.rmtree(d)


@pytest.mark.parametrize("hash_type", ["sha256", "blake3"])
def test_fetch_checks_side_files_with_the_bundles_hash_type(  # type: ignore[no-untyped-def]
    tmp_path: Path, file_key, sign_keys, hash_type: str
) -> None:
    """config.json is copied by fetch only after its whole-file digest (OMS hash_type)."""
    from weightguard.errors import IntegrityError
    from weightguard.transfer import fetch_model

    src = tmp_path / "plain.safetensors"
    write_st(src, MODEL_LAYOUT)
    d = tmp_path / "enc"
    d.mkdir()
    encrypt(src, d / "model.safetensors", file_key, chunk_size=CHUNK)
    (d / "config.json").write_text(json.dumps({"hidden": 64}))
    sign(d, d / "model.sig", sign_keys, hash_type=hash_type)
    out = tmp_path / "out"
    fetch_model(d, out, policy=sign_keys.policy(), allow_disk=True, audit=memory_audit()[0])
    assert json.loads((out / "config.json").read_text()) == {"hidden": 64}

    (d / "config.json").write_text(json.dumps({"hidden": 65}))  # same size, other bytes
    bad = tmp_path / "bad"
    with pytest.raises(IntegrityError, match=f"signed {hash_type} digest") as ei:
        fetch_model(d, bad, policy=sign_keys.policy(), allow_disk=True, audit=memory_audit()[0])
    assert "config.json" in str(ei.value)
    assert not bad.exists()  # all or nothing: the decrypted shard was removed too
