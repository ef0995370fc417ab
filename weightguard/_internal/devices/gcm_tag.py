"""Verify an AES-256-GCM tag over the ciphertext without producing the plaintext.

``cryptography`` has no tag-only API, and GHASH in Python runs at a few MB/s.  GHASH is
linear, so OpenSSL's own (CLMUL) GHASH does the bulk: encrypting an EMPTY message with
the same key and nonce and associated data ``A || pad || C`` hashes exactly the blocks
GCM hashes for (A, C); only the final length block differs, by ``L ^ L'``, so

    tag(A, C) = tag'(A||pad||C, "") ^ (L ^ L') * H,     H = AES_K(0^128)

(both tags share ``E_K(J0)``, which cancels).  One GF(2^128) product per record is all
the Python work.  The result is compared in constant time with the stored tag.

OpenSSL releases the GIL while it hashes (about 10 GB/s per core measured here, 2
threads 20 GB/s), so the load's workers check their records' tags in parallel.  The key
is passed to OpenSSL as the cipher's own (wipeable) buffer, never copied into an
immutable ``bytes``; :class:`TagChecker` derives ``H`` once per cipher and load.
"""

from __future__ import annotations

import hmac
import struct
import threading
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from weightguard._internal.foundation.memory import wipe

__all__ = ["TAG_SIZE", "TagChecker", "gcm_tag_matches", "ghash_key"]

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
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block: H = AES_K(0)
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
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
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


class TagChecker:
    """The GCM tag check of one load's records: ``H`` derived once per cipher.

    ``cipher`` is a :class:`~weightguard._internal.format.layout.ChunkCipher` (anything
    with ``gcm_record(index) -> (key, nonce, aad)``).  Thread-safe; :meth:`clear` drops
    the derived ``H`` values at the end of the load.
    """

    def __init__(self) -> None:
        self._h: dict[int, tuple[Any, int]] = {}  # id(cipher) -> (cipher, H)
        self._lock = threading.Lock()

    def matches(self, cipher: Any, index: int, record: memoryview) -> bool:
        key, nonce, aad = cipher.gcm_record(index)
        with self._lock:
            got = self._h.get(id(cipher))
            if got is None or got[0] is not cipher:
                got = self._h[id(cipher)] = (cipher, ghash_key(key))
        return gcm_tag_matches(key, got[1], nonce, aad, record)

    def clear(self) -> None:
        with self._lock:
            self._h.clear()
