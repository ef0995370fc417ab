"""Record-range reads for the lazy reader (``weightguard.safe_open``).

A request is a byte range ``[begin, end)`` of one model file's data section (a tensor,
or a run of its rows).  Only the records that hold those bytes are read; each is
checked against its signed chunk digest (when the model is signed) and AEAD-decrypted
(which checks its GCM tag) before any of its bytes reaches the caller's buffer:

* a record wholly inside the range is read, checked and decrypted straight into the
  caller's buffer (no staging copy);
* a record at an edge of the range (it also holds bytes of a neighbouring tensor) is
  read and decrypted into a private buffer, and only the requested part is copied out.
  The verified plaintext of such edge records is kept in a small private cache (bounded
  in bytes, wiped when evicted or closed), so reading a model tensor by tensor reads
  each record once; callers always get copies, never views of it.

On any failure the caller's buffer is zeroed and the first error is raised (an
:class:`IntegrityError` in preference to others).  Records of one request are read in
parallel by a pool the reader owns (the hashes and AES-GCM release the GIL); the pool
(and the count of usable cores it is sized by) is made only when a request needs more
than one record read, so an open that reads one record starts no thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from weightguard._internal.foundation.memory import wipe
from weightguard._internal.load.copiers import populate_for_write
from weightguard._internal.load.pipeline import digest_matches
from weightguard.errors import ConfigError, IntegrityError

__all__ = ["RangeReader", "ReadStats"]

DEFAULT_CACHE_BYTES = 32 * 1024 * 1024


@dataclass
class ReadStats:
    records_read: int = 0  # records read from the source and checked
    bytes_read: int = 0  # source bytes of those records (ciphertext and tags included)
    bytes_decrypted: int = 0  # plaintext bytes produced by AEAD decryption
    cache_hits: int = 0  # edge records served from the verified cache


@dataclass(frozen=True)
class _Task:
    key: Any  # file identity, for the cache
    k: int  # record index (1-based data record)
    src_off: int
    src_len: int
    data_off: int
    n: int  # plaintext bytes of the record
    lo: int  # requested part, as data-section offsets
    hi: int
    out_off: int  # where [lo, hi) goes in the caller's buffer


def _uninitialized(n: int) -> Any:
    """A writable byte buffer of ``n`` bytes, not zero-filled first (every byte is
    written before it is read: a record read, or decrypted, whole), its pages mapped in
    one call (a fresh process's first 4 MiB record otherwise takes 1024 page faults per
    buffer, about as long as reading, hashing and decrypting it)."""
    import numpy as np

    buf = np.empty(n, dtype=np.uint8)
    populate_for_write(int(buf.ctypes.data), n)
    return buf


class RangeReader:
    """Reads checked byte ranges of model files; owns a small pool and an edge cache."""

    def __init__(
        self, *, workers: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self._workers = None if workers is None else max(1, int(workers))
        self.cache_bytes = max(0, int(cache_bytes))
        self.stats = ReadStats()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, int], Any] = OrderedDict()
        self._cached = 0
        self._pool: cf.ThreadPoolExecutor | None = None
        self._ct_free: list[Any] = []
        self._closed = False

    @property
    def workers(self) -> int:
        """Threads for the records of one request: ``workers=``, else the usable cores
        (read on first need: the cgroup files cost milliseconds of a fresh process)."""
        if self._workers is None:
            from weightguard._internal.foundation.cpus import usable_cpus

            self._workers = usable_cpus()
        return self._workers

    # -- the one operation --------------------------------------------------------------
    def read(
        self,
        f: Any,
        begin: int,
        end: int,
        out: memoryview,
        *,
        populate: Any = None,
    ) -> None:
        """Fill ``out`` (``end - begin`` bytes) with data-section bytes ``[begin, end)``.

        ``f`` is an opened :class:`~weightguard._internal.load.model_files.ModelFile`
        (its geometry, source and cipher).  ``populate(offset, length)``, if given, is
        called before a record is written straight into ``out`` (first-touch hint).
        """
        if self._closed:
            raise ConfigError("the reader is closed", hint="open the model again")
        if end - begin != len(out):
            raise ValueError("buffer size does not match the range")  # pragma: no cover
        if end <= begin:
            return
        geo = f.geometry
        if begin < 0 or end > geo.data_size:
            raise IntegrityError(
                f"bytes [{begin}, {end}) are outside the data section ({geo.data_size} bytes)",
                path=f.display,
            )
        key = id(f)
        tasks: list[_Task] = []
        try:
            for k in range(begin // geo.chunk + 1, (end - 1) // geo.chunk + 2):
                src_off, src_len, data_off, n = geo.span(k)
                lo, hi = max(begin, data_off), min(end, data_off + n)
                with self._lock:
                    cached = self._cache.get((key, k))
                    if cached is not None:
                        self._cache.move_to_end((key, k))
                        out[lo - begin : hi - begin] = cached[lo - data_off : hi - data_off]
                        self.stats.cache_hits += 1
                        continue
                tasks.append(_Task(key, k, src_off, src_len, data_off, n, lo, hi, lo - begin))
            if len(tasks) <= 1 or self.workers == 1:
                for t in tasks:
                    self._one(f, t, out, populate)
            elif tasks:
                self._parallel(f, tasks, out, populate)
        except BaseException:
            out[:] = bytes(len(out))  # nothing partial reaches the caller
            raise

    def _parallel(self, f: Any, tasks: list[_Task], out: memoryview, populate: Any) -> None:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="wg-lazy"
            )
        stop = threading.Event()

        def run(t: _Task) -> None:
            if not stop.is_set():
                try:
                    self._one(f, t, out, populate)
                except BaseException:
                    stop.set()
                    raise

        futures = [self._pool.submit(run, t) for t in tasks]
        try:
            pending = set(futures)
            while pending:  # short waits so a KeyboardInterrupt reaches this thread
                _, pending = cf.wait(pending, timeout=0.1)
        except BaseException:
            stop.set()
            cf.wait(futures)
            raise
        errors = [e for e in (fu.exception() for fu in futures) if e is not None]
        if errors:
            raise next((e for e in errors if isinstance(e, IntegrityError)), errors[0])

    def _one(self, f: Any, t: _Task, out: memoryview, populate: Any) -> None:
        geo = f.geometry
        digest = None
        if geo.digests is not None:
            if t.k >= len(geo.digests):
                raise IntegrityError(
                    "the signature has no digest for this record", path=f.display, chunk=t.k
                )
            digest = geo.digests[t.k]
        full = t.lo == t.data_off and t.hi == t.data_off + t.n
        dst = out[t.out_off : t.out_off + (t.hi - t.lo)]
        if populate is not None:
            populate(t.out_off, t.hi - t.lo)
        plain: Any = None
        try:
            if f.cipher is not None:
                buf = self._take_ct(t.src_len)
                try:
                    ct = memoryview(buf)[: t.src_len]
                    f.source.read_into(t.src_off, ct)
                    self._check(f, t, ct, digest)
                    if full:
                        f.cipher.decrypt_record_into(t.k, ct, dst)
                    else:
                        plain = _uninitialized(t.n)
                        f.cipher.decrypt_record_into(t.k, ct, memoryview(plain))
                finally:
                    self._give_ct(buf)
                decrypted = t.n
            else:
                if full:
                    f.source.read_into(t.src_off, dst)
                    self._check(f, t, dst, digest)
                else:
                    plain = _uninitialized(t.n)
                    f.source.read_into(t.src_off, plain)
                    self._check(f, t, plain, digest)
                decrypted = 0
            if plain is not None:
                dst[:] = memoryview(plain)[t.lo - t.data_off : t.hi - t.data_off]
        except BaseException:
            if plain is not None:
                wipe(memoryview(plain))
            raise
        with self._lock:
            self.stats.records_read += 1
            self.stats.bytes_read += t.src_len
            self.stats.bytes_decrypted += decrypted
            if plain is not None:
                self._keep((t.key, t.k), plain)

    def _take_ct(self, n: int) -> Any:
        """A reusable ciphertext buffer of at least ``n`` bytes (ciphertext is not secret)."""
        with self._lock:
            for i, b in enumerate(self._ct_free):
                if len(b) >= n:
                    return self._ct_free.pop(i)
        return _uninitialized(n)

    def _give_ct(self, buf: Any) -> None:
        with self._lock:
            if len(self._ct_free) <= (self._workers or 1):
                self._ct_free.append(buf)

    @staticmethod
    def _check(f: Any, t: _Task, data: Any, digest: bytes | None) -> None:
        if digest is None:
            return
        if not digest_matches(data, digest, f.geometry.algorithm, path=f.display):
            raise IntegrityError(
                "chunk digest does not match the signed digest", path=f.display, chunk=t.k
            )

    def _keep(self, key: tuple[Any, int], plain: Any) -> None:
        """Cache a verified edge record (lock held); evict the oldest past the budget."""
        if len(plain) > self.cache_bytes or key in self._cache:
            wipe(memoryview(plain))
            return
        self._cache[key] = plain
        self._cached += len(plain)
        while self._cached > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)
            wipe(memoryview(old))

    def close(self) -> None:
        """Stop the pool and wipe the cached plaintext.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cache, self._cache, self._cached = self._cache, OrderedDict(), 0
            self._ct_free = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for buf in cache.values():
            wipe(memoryview(buf))
