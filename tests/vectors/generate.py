"""Regenerate the format test vectors (deterministic).  Run from the repo root:

    .venv/bin/python tests/vectors/generate.py

Writes ``vectors.json`` plus, per case, ``<name>.safetensors`` (input),
``<name>.wgenc`` (expected artifact as 0.1.0 wrote it, ``LEGACY_MAGIC``) and
``<name>-m16.wgenc`` (the same input as written now, 16-byte ``MAGIC``).  The values
are fixed so that another implementation can check itself against docs/FORMAT.md;
never use them as keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from weightguard._internal.format import layout as fmt  # noqa: E402
from weightguard._internal.keys.providers import WrappedKey  # noqa: E402

KEK = bytes(range(0x40, 0x60))  # the key file's key-encryption key
DATA_KEY = bytes(range(0x00, 0x20))
SALT = bytes(range(0x80, 0xA0))
NONCE_PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
WRAP_NONCE = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babb")
CONTEXT = "weightguard/test-vectors"
CHUNK = 4096


def st_file(
    tensors: list[tuple[str, str, list[int], bytes]], metadata: dict[str, str] | None
) -> bytes:
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off, blobs = 0, []
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(n))


CASES: dict[str, tuple[bytes, bool]] = {
    "empty-tensor": (st_file([("empty", "F32", [0, 4], b"")], {"format": "pt"}), False),
    "exact-multiple": (
        st_file(
            [("a", "BF16", [2, 1024], pattern(4096)), ("b", "U8", [4096], pattern(4096)[::-1])],
            None,
        ),
        False,
    ),
    "one-byte-past": (
        st_file([("a", "F32", [2048], pattern(8192)), ("flag", "BOOL", [1], b"\x01")], {"k": "v"}),
        False,
    ),
    "encrypted-header": (
        st_file([("secret.weight", "F8_E4M3", [3, 5], pattern(15))], None),
        True,
    ),
}


def wrapped_key() -> WrappedKey:
    kid = hmac.new(KEK, b"weightguard/v1 key id", hashlib.sha256).digest()[:8].hex()
    ct = AESGCM(KEK).encrypt(
        WRAP_NONCE, DATA_KEY, b"weightguard/v1 file-wrap\x00" + CONTEXT.encode()
    )
    blob = base64.b64encode(WRAP_NONCE + ct).decode()
    return WrappedKey("file", "file://vectors.key", None, CONTEXT, f"wgfile:v1:{kid}:{blob}")


def build(
    name: str, plain: bytes, encrypt_header: bool, magic: bytes = fmt.MAGIC
) -> tuple[bytes, dict[str, Any]]:
    n = struct.unpack("<Q", plain[:8])[0]
    st_header = json.loads(plain[8 : 8 + n])
    dk = bytearray(DATA_KEY)
    header, preamble = fmt.new_header(
        data_key=dk,
        wrapped_key=wrapped_key(),
        content="safetensors",
        st_header=st_header,
        st_header_size=8 + n,
        data_size=len(plain) - 8 - n,
        chunk_size=CHUNK,
        header_encrypted=encrypt_header,
        randomness=fmt.FileRandomness(SALT, NONCE_PREFIX),
        path=name,
        magic=magic,
    )
    cipher = fmt.ChunkCipher(header, dk)
    out = bytearray(preamble)
    records = []
    for i in range(header.num_chunks + 1):
        off, size = header.plain_offset(i), header.plain_size(i)
        buf = bytearray(size + fmt.TAG_SIZE)
        cipher.encrypt_record_into(i, memoryview(plain)[off : off + size], memoryview(buf))
        nonce, aad = cipher._nonce_aad(i)
        records.append({"index": i, "plaintext_size": size, "nonce": nonce.hex(), "aad": aad.hex()})
        out += buf
    assert len(out) == header.total_size
    legacy = magic == fmt.LEGACY_MAGIC
    info = {
        "name": name if legacy else f"{name}-m16",
        "input": f"{name}.safetensors",
        "output": f"{name}.wgenc" if legacy else f"{name}-m16.wgenc",
        "magic": magic.hex(),
        "chunk_size": CHUNK,
        "header_encrypted": encrypt_header,
        "header_json": header.raw.decode(),
        "header_mac": header.mac.hex(),
        "header_core_sha256": header.core_digest.hex(),
        "aead_key": fmt._hkdf(DATA_KEY, SALT, fmt.INFO_AEAD).hex(),
        "mac_key": fmt._hkdf(DATA_KEY, SALT, fmt.INFO_MAC).hex(),
        "commitment": header.commitment.hex(),
        "num_chunks": header.num_chunks,
        "artifact_size": header.total_size,
        "records": records,
    }
    return bytes(out), info


def main() -> None:
    doc: dict[str, Any] = {
        "description": "weightguard artifact format v1 test vectors; see docs/FORMAT.md",
        "data_key": DATA_KEY.hex(),
        "salt": SALT.hex(),
        "nonce_prefix": NONCE_PREFIX.hex(),
        "key_file_kek": KEK.hex(),
        "context": CONTEXT,
        "cases": [],
    }
    for magic in (fmt.LEGACY_MAGIC, fmt.MAGIC):
        for name, (plain, enc_header) in CASES.items():
            art, info = build(name, plain, enc_header, magic)
            (HERE / info["input"]).write_bytes(plain)
            (HERE / info["output"]).write_bytes(art)
            doc["cases"].append(info)
    (HERE / "vectors.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
