"""Verify an AES-256-GCM tag over the ciphertext without producing the plaintext.

``cryptography`` has no tag-only API, and GHASH in Python runs at a few MB/s.  GHASH is
linear, so OpenSSL's own (CLMUL) GHASH does the bulk: encrypting an EMPTY message with
the same key and nonce and associated data ``A || pad || C`` hashes exactly the blocks
GCM hashes for (A, C); only the final length block differs, by ``L ^ L'``, so

    tag(A, C) = tag'(A||pad||C, "") ^ (L ^ L') * H,     H = AES_K(0^128)

(both tags share ``E_K(J0)``, which cancels).  One GF(2^128) product per record is all
the Python work.  The result is compared in constant time with the stored tag.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from weightguard._internal.foundation.memory import wipe

__all__ = ["TAG_SIZE", "gcm_tag_matches", "ghash_key"]

TAG_SIZE = 16
_R = 0xE1 << 120


def _gf_mul(x: int, y: int) -> int:
    """Product in GCM's GF(2^128) (bit-reflected, SP 800-38D algorithm 1)."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def ghash_key(key: bytes | bytearray) -> int:
    """H = AES_K(0^128) as an integer (secret: derived from the key)."""
    enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()  # noqa: S305 - one block: H = AES_K(0)
    h = bytearray(enc.update(bytes(16)) + enc.finalize())
    try:
        return int.from_bytes(h, "big")
    finally:
        wipe(h)


def gcm_tag_matches(
    key: bytes | bytearray, h: int, nonce: bytes, aad: bytes, record: memoryview
) -> bool:
    """Whether ``record`` (ciphertext || 16-byte tag) carries the right GCM tag."""
    if len(record) < TAG_SIZE:
        return False
    ct, tag = record[:-TAG_SIZE], bytes(record[-TAG_SIZE:])
    enc = Cipher(algorithms.AES(bytes(key)), modes.GCM(nonce)).encryptor()
    pad = (-len(aad)) % 16
    enc.authenticate_additional_data(aad + bytes(pad))
    if len(ct):
        enc.authenticate_additional_data(ct)
    enc.finalize()
    a_bits, c_bits = 8 * len(aad), 8 * len(ct)
    real = struct.pack(">QQ", a_bits, c_bits)
    alt = struct.pack(">QQ", a_bits + 8 * pad + c_bits, 0)
    delta = int.from_bytes(real, "big") ^ int.from_bytes(alt, "big")
    fix = _gf_mul(delta, h)
    want = (int.from_bytes(enc.tag, "big") ^ fix).to_bytes(16, "big")
    return hmac.compare_digest(want, tag)
