"""Per-core ceilings of the primitives each path is built from (one thread each).

    python -m benchmarks.micro          # prints JSON

- ``aes256gcm_decrypt_into``: ``cryptography`` AESGCM ``decrypt_into`` on 4 MiB records,
  reused output buffer (the loader's inner loop);
- ``aes256gcm_encrypt_into``: the same for encryption (``weightguard encrypt``);
- ``sha256``: ``hashlib.sha256`` over 4 MiB buffers (signing and the chunk digests);
- ``memcpy``: copying 4 MiB between two preallocated buffers (``memoryview`` slice
  assignment, i.e. ``memcpy``), the floor of any copy into tensor memory;
- ``page_cache_read``: ``readinto`` of a warm file into a reused buffer (the I/O floor);
- ``xsalsa20poly1305_open``: libsodium ``crypto_secretbox_open`` via libnacl, tensorizer's
  cipher (allocates its output), when libnacl is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

CHUNK = 4 << 20


def _rate(fn: Callable[[], object], nbytes: int, min_time: float = 0.4) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n * nbytes / dt / 1e9


def measure() -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    out: dict[str, Any] = {"chunk_bytes": CHUNK, "unit": "GB/s, one thread"}
    data = os.urandom(CHUNK)
    key = AESGCM.generate_key(256)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    ct = aead.encrypt(nonce, data, b"aad")
    buf = bytearray(CHUNK)
    ctbuf = bytearray(CHUNK + 16)
    if hasattr(aead, "decrypt_into"):
        out["aes256gcm_decrypt_into"] = _rate(
            lambda: aead.decrypt_into(nonce, ct, b"aad", buf), CHUNK
        )
        out["aes256gcm_encrypt_into"] = _rate(
            lambda: aead.encrypt_into(nonce, data, b"aad", ctbuf), CHUNK
        )
    out["aes256gcm_decrypt_alloc"] = _rate(lambda: aead.decrypt(nonce, ct, b"aad"), CHUNK)
    out["sha256"] = _rate(lambda: hashlib.sha256(data).digest(), CHUNK)
    mv_dst, mv_src = memoryview(buf), memoryview(data)

    def copy() -> None:
        mv_dst[:] = mv_src

    out["memcpy"] = _rate(copy, CHUNK)
    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR")) as f:
        for _ in range(64):
            f.write(data)
        f.flush()
        size = 64 * CHUNK

        def read() -> None:
            with open(f.name, "rb", buffering=0) as g:
                while g.readinto(buf):
                    pass

        out["page_cache_read"] = _rate(read, size)
    try:
        import libnacl
        import libnacl.utils

        k = libnacl.utils.salsa_key()
        box = libnacl.crypto_secretbox(data, b"\0" * 24, k)
        out["xsalsa20poly1305_open"] = _rate(
            lambda: libnacl.crypto_secretbox_open(box, b"\0" * 24, k), CHUNK
        )
    except Exception as exc:  # libsodium missing
        out["xsalsa20poly1305_open"] = f"unavailable: {exc}"
    out["cpu_count"] = os.cpu_count()
    return out


if __name__ == "__main__":
    json.dump(measure(), sys.stdout, indent=1)
    print()
