"""Per-core ceilings of the primitives each path is built from (one thread each).

    python -m benchmarks.micro                  # prints JSON
    python -m benchmarks.micro --suites 3       # also: AES-GCM vs AES-CTR + BLAKE3, 3 GB each

- ``aes256gcm_decrypt_into``: ``cryptography`` AESGCM ``decrypt_into`` on 4 MiB records,
  reused output buffer (the loader's inner loop);
- ``aes256gcm_encrypt_into``: the same for encryption (``weightguard encrypt``);
- ``aes256ctr_update_into``: AES-256-CTR (``Cipher(...).decryptor().update_into``), the
  cipher half of an encrypt-then-MAC suite;
- ``blake3``, ``sha256``: the chunk digests (and signing);
- ``memcpy``: copying 4 MiB between two preallocated buffers (``memoryview`` slice
  assignment, i.e. ``memcpy``), the floor of any copy into tensor memory;
- ``page_cache_read``: ``preadv`` of a warm, *clean* file into a reused buffer (the I/O
  floor).  The file is written, fsynced, dropped from the cache and read once before the
  timer: a just-written file's pages are the writer's (dirty or under writeback, 4 KiB
  folios) and read 2-3x slower than a file that came into the cache by reading, which is
  how a model file is warm;
- ``populate_write``: first touch of fresh anonymous destination memory
  (``MADV_POPULATE_WRITE`` of a new ``mmap``), what every load pays per byte it returns;
- ``xsalsa20poly1305_open``: libsodium ``crypto_secretbox_open`` via libnacl, tensorizer's
  cipher (allocates its output), when libnacl is installed.

``per_core_s_per_gb`` restates them as thread-seconds per GB, the unit of the per-core table
in docs/performance.md.  ``suites`` (``--suites N``): the cipher-suite decision of issue 17,
AES-256-GCM ``decrypt_into`` against AES-256-CTR ``update_into``, each with and without
BLAKE3 of the ciphertext, alternating per GB in one process, N GB each; seconds per GB.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

CHUNK = 4 << 20
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14


def _rate(fn: Callable[[], object], nbytes: int, min_time: float = 0.4) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n * nbytes / dt / 1e9


def _warm_clean_file(data: bytes, copies: int) -> str:
    """A file in the page cache the way a model file is: written, synced, evicted, read."""
    fd, path = tempfile.mkstemp(dir=os.environ.get("TMPDIR"), prefix="wg-micro-")
    try:
        for _ in range(copies):
            os.write(fd, data)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(CHUNK)
        off = 0
        while n := os.preadv(fd, [buf], off):
            off += n
    finally:
        os.close(fd)
    return path


def _page_cache_read(data: bytes) -> float:
    copies = 64
    path = _warm_clean_file(data, copies)
    buf = bytearray(CHUNK)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:

            def read() -> None:
                off = 0
                while n := os.preadv(fd, [buf], off):
                    off += n

            return _rate(read, copies * CHUNK)
        finally:
            os.close(fd)
    finally:
        os.unlink(path)


def _populate_write(size: int = 64 << 20) -> float | str:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def once() -> None:
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
            rc = libc.madvise(addr, size, _MADV_POPULATE_WRITE)
            if rc != 0:
                raise OSError(ctypes.get_errno(), "madvise(MADV_POPULATE_WRITE)")
        finally:
            del addr
            m.close()

    try:
        return _rate(once, size)
    except (OSError, BufferError) as exc:
        return f"unavailable: {exc}"


def measure() -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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
    ctr = Cipher(algorithms.AES(key), modes.CTR(os.urandom(16))).decryptor()
    ctr_out = bytearray(CHUNK + 15)
    out["aes256ctr_update_into"] = _rate(lambda: ctr.update_into(data, ctr_out), CHUNK)
    try:
        from blake3 import blake3

        out["blake3"] = _rate(lambda: blake3(data).digest(), CHUNK)
    except ImportError as exc:
        out["blake3"] = f"unavailable: {exc}"
    out["sha256"] = _rate(lambda: hashlib.sha256(data).digest(), CHUNK)
    mv_dst, mv_src = memoryview(buf), memoryview(data)

    def copy() -> None:
        mv_dst[:] = mv_src

    out["memcpy"] = _rate(copy, CHUNK)
    out["page_cache_read"] = _page_cache_read(data)
    out["populate_write"] = _populate_write()
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
    out["per_core_s_per_gb"] = {k: 1 / v for k, v in out.items() if isinstance(v, float) and v}
    out["cpu_count"] = os.cpu_count()
    return out


def suites(gigabytes: int) -> dict[str, Any]:
    """The per-byte work of each suite on one thread, in s per GB, alternating per GB:

    - ``aes256gcm``: v1's decrypt alone (an encrypted artifact loaded unsigned);
    - ``aes256ctr``: counter mode alone (what a v2 suite would decrypt with);
    - ``blake3+aes256gcm``: v1 signed: BLAKE3 of every ciphertext chunk (the signed chunk
      digests) then ``decrypt_into``;
    - ``blake3+aes256ctr``: the proposed v2 (encrypt-then-MAC): BLAKE3 of every ciphertext
      record (the digests an authenticated header carries) then CTR, no GHASH.
    """
    from blake3 import blake3
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    record = 4 << 20
    per_gb = (1 << 30) // record
    key = AESGCM.generate_key(256)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, os.urandom(record), None)
    body = sealed[:-16]
    dst = bytearray(record)
    ctr_dst = bytearray(record + 15)

    def run(hash_first: bool, gcm: bool) -> float:
        t = time.perf_counter()
        for i in range(per_gb):
            if hash_first:
                blake3(body).digest()
            if gcm:
                aead.decrypt_into(nonce, sealed, None, dst)
            else:
                dec = Cipher(algorithms.AES(key), modes.CTR(i.to_bytes(16, "big"))).decryptor()
                dec.update_into(body, ctr_dst)
        return time.perf_counter() - t

    variants = {
        "aes256gcm": (False, True),
        "aes256ctr": (False, False),
        "blake3+aes256gcm": (True, True),
        "blake3+aes256ctr": (True, False),
    }
    for args in variants.values():
        run(*args)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(gigabytes):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(run(*variants[name]) * 1e9 / (per_gb * record))
    out: dict[str, Any] = {"unit": "s per GB, one thread", "gigabytes": gigabytes}
    for name, ts in times.items():
        out[name] = {"min": min(ts), "median": statistics.median(ts), "all": ts}
    out["v2_over_v1_signed_min"] = out["blake3+aes256ctr"]["min"] / out["blake3+aes256gcm"]["min"]
    out["v2_over_v1_unsigned_min"] = out["blake3+aes256ctr"]["min"] / out["aes256gcm"]["min"]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", type=int, default=0, help="GB per suite for the cipher choice")
    args = ap.parse_args()
    from benchmarks.harness import machine_info

    res = measure()
    res["machine"] = machine_info()  # CPU model + flags, cores, kernel, load average
    if args.suites:
        res["suites"] = suites(args.suites)
    json.dump(res, sys.stdout, indent=1)
    print()
