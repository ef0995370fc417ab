"""The committed test vectors (tests/vectors/) against weightguard and against an
independent re-implementation of docs/FORMAT.md written from the spec alone."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from weightguard import crypt
from weightguard._internal.crypt.encrypt import _encrypt_one
from weightguard._internal.format.layout import FileRandomness
from weightguard._internal.keys.providers import WrappedKey

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
DOC = json.loads((VECTORS / "vectors.json").read_text())
CASES = {c["name"]: c for c in DOC["cases"]}


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def spec_encrypt(plain: bytes, case: dict[str, Any]) -> bytes:
    """docs/FORMAT.md, section "Encryption", step by step."""
    dk = bytes.fromhex(DOC["data_key"])
    salt = bytes.fromhex(DOC["salt"])
    prefix = bytes.fromhex(DOC["nonce_prefix"])
    chunk = case["chunk_size"]
    n = struct.unpack("<Q", plain[:8])[0]
    st_size, data = 8 + n, plain[8 + n :]
    aead_key = _hkdf(dk, salt, b"weightguard/v1 aead key")
    mac_key = _hkdf(dk, salt, b"weightguard/v1 header mac key")
    commitment = _hkdf(dk, salt, b"weightguard/v1 key commitment")
    wrapped = json.loads(case["header_json"])["wrapped_key"]  # opaque to the format
    num_chunks = max(1, -(-len(data) // chunk))
    header = {
        "version": 1,
        "alg": {"aead": "AES-256-GCM", "kdf": "HKDF-SHA256", "mac": "HMAC-SHA256"},
        "content": "safetensors",
        "chunk_size": chunk,
        "data_size": len(data),
        "st_header_size": st_size,
        "num_chunks": num_chunks,
        "salt": salt.hex(),
        "nonce_prefix": prefix.hex(),
        "commitment": commitment.hex(),
        "wrapped_key": wrapped,
        "header_encrypted": case["header_encrypted"],
        "tensors": None if case["header_encrypted"] else json.loads(plain[8 : 8 + n]),
    }
    raw = _canonical(header)
    pre = bytes.fromhex(case["magic"]) + struct.pack("<I", len(raw)) + raw
    out = pre + hmac.new(mac_key, pre, hashlib.sha256).digest()
    core = hashlib.sha256(_canonical({k: v for k, v in header.items() if k != "wrapped_key"}))
    aead = AESGCM(aead_key)
    records = [plain[:st_size]] + [data[i * chunk : (i + 1) * chunk] for i in range(num_chunks)]
    for index, rec in enumerate(records):
        tail = struct.pack(">IB", index, 1 if index == num_chunks else 0)
        out += aead.encrypt(prefix + tail, rec, b"weightguard/v1 record\x00" + core.digest() + tail)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_vector_matches_spec_reimplementation(name: str) -> None:
    case = CASES[name]
    plain = (VECTORS / case["input"]).read_bytes()
    expected = (VECTORS / case["output"]).read_bytes()
    assert spec_encrypt(plain, case) == expected
    assert len(expected) == case["artifact_size"]


def test_vector_shapes() -> None:
    def data_size(c: dict[str, Any]) -> int:
        return int(json.loads(c["header_json"])["data_size"])

    assert data_size(CASES["empty-tensor"]) == 0 and CASES["empty-tensor"]["num_chunks"] == 1
    assert data_size(CASES["exact-multiple"]) == 2 * 4096
    assert CASES["exact-multiple"]["num_chunks"] == 2
    assert data_size(CASES["one-byte-past"]) == 2 * 4096 + 1
    assert CASES["one-byte-past"]["records"][-1]["plaintext_size"] == 1
    assert CASES["encrypted-header"]["header_encrypted"] is True
    assert b"secret" not in (VECTORS / "encrypted-header.wgenc").read_bytes()
    legacy, current = b"\x89WGUARD\n", b"\x08" + b"\x00" * 7 + b"\x89WGUARD\n"
    for name, case in CASES.items():
        art = (VECTORS / case["output"]).read_bytes()
        assert art.startswith(legacy if "-m16" not in name else current), name
    assert {n.removesuffix("-m16") for n in CASES} == {n for n in CASES if "-m16" not in n}


@pytest.mark.parametrize("name", sorted(CASES))
def test_weightguard_reproduces_and_decrypts_vector(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    src = VECTORS / case["input"]
    expected = (VECTORS / case["output"]).read_bytes()
    w = json.loads(case["header_json"])["wrapped_key"]
    out = tmp_path / "out.wgenc"
    header = _encrypt_one(
        src,
        out,
        bytearray.fromhex(DOC["data_key"]),
        WrappedKey(w["provider"], w["uri"], w["key_version"], w["context"], w["ciphertext"]),
        chunk_size=case["chunk_size"],
        encrypt_header=case["header_encrypted"],
        workers=2,
        progress=None,
        randomness=FileRandomness(bytes.fromhex(DOC["salt"]), bytes.fromhex(DOC["nonce_prefix"])),
    )
    if name.endswith("-m16"):  # weightguard writes only the current magic
        assert out.read_bytes() == expected
        assert header.mac.hex() == case["header_mac"]
    else:  # a 0.1.0 artifact: same header JSON and records; only magic and MAC differ
        got, hlen = out.read_bytes(), 4 + len(case["header_json"].encode())
        assert got[16 : 16 + hlen] == expected[8 : 8 + hlen]
        assert got[16 + hlen + 32 :] == expected[8 + hlen + 32 :]
        assert header.mac.hex() != case["header_mac"]
    assert header.core_digest.hex() == case["header_core_sha256"]
    # decrypt the committed vector through the key-file provider
    key = tmp_path / "vectors.key"
    key.write_bytes(bytes.fromhex(DOC["key_file_kek"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.decrypt_file(VECTORS / case["output"], tmp_path / "dec", data_key=f"file://{key}")
    assert (tmp_path / "dec").read_bytes() == src.read_bytes()


def test_vector_intermediates() -> None:
    dk, salt = bytes.fromhex(DOC["data_key"]), bytes.fromhex(DOC["salt"])
    case = CASES["one-byte-past"]
    assert _hkdf(dk, salt, b"weightguard/v1 aead key").hex() == case["aead_key"]
    assert _hkdf(dk, salt, b"weightguard/v1 header mac key").hex() == case["mac_key"]
    assert _hkdf(dk, salt, b"weightguard/v1 key commitment").hex() == case["commitment"]
    last = case["records"][-1]
    assert last["nonce"] == DOC["nonce_prefix"] + f"{last['index']:08x}" + "01"
    assert case["records"][0]["nonce"].endswith("0000000000")
