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
* a request may name ranges it expects next (``ahead=``: the lazy reader passes the
  next tensors of a caller walking ``keys()`` or ``offset_keys()`` in order); up to
  ``read_ahead`` of their records not cached yet are read, checked and decrypted on the
  reader's pool into that same cache while the caller copies the current ones, so a
  loop of ``get_tensor`` keeps the cores busy as the loader's one pass does.  Records
  are read ahead only into free room of the cache (never evicting a record a tensor
  still to be returned needs: that record would be read twice).  A record
  that fails its checks while read ahead is dropped (never cached); the request that
  needs it reads it again and raises the error.

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
from collections.abc import Iterable, Sequence
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
    read_ahead: int = 0  # of records_read: read ahead of a sequential caller


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


def _as_array(out: memoryview) -> Any:
    """``out`` as a numpy byte array (copies into it run without the GIL)."""
    import numpy as np

    return np.frombuffer(out, dtype=np.uint8)


def _wait(futures: Any) -> None:
    """Wait for ``futures`` in short steps, so a KeyboardInterrupt reaches this thread."""
    pending = set(futures)
    while pending:
        _, pending = cf.wait(pending, timeout=0.1)


class RangeReader:
    """Reads checked byte ranges of model files; owns a small pool and an edge cache.

    ``read_ahead``: records read ahead of a sequential caller (default: the pool's
    size (at least 2) + 1, and at most half the cache); 0 turns reading ahead off (as
    does a cache of 0 bytes).  A record the caller needs that no worker has started
    yet is read by the caller's thread (so it never waits idle on a queue).
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        read_ahead: int | None = None,
    ) -> None:
        self._workers = None if workers is None else max(1, int(workers))
        self.cache_bytes = max(0, int(cache_bytes))
        self._read_ahead = None if read_ahead is None else max(0, int(read_ahead))
        self.stats = ReadStats()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, int], Any] = OrderedDict()
        self._cached = 0
        # records being read ahead: (future, file, task)
        self._ahead: dict[tuple[Any, int], tuple[cf.Future[None], Any, _Task]] = {}
        self._pins: dict[int, int] = {}  # id(cached record) -> copies out of it under way
        self._orphans: dict[int, Any] = {}  # evicted while pinned: recycled when unpinned
        self._pool: cf.ThreadPoolExecutor | None = None
        self._ct_free: list[Any] = []
        self._plain_free: list[Any] = []  # wiped record buffers, reused (no fresh pages)
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
        populate: int | None = None,
        ahead: Sequence[tuple[Any, int, int]] = (),
    ) -> None:
        """Fill ``out`` (``end - begin`` bytes) with data-section bytes ``[begin, end)``.

        ``f`` is an opened :class:`~weightguard._internal.load.model_files.ModelFile`
        (its geometry, source and cipher).  ``populate``, if given, is ``out``'s address:
        the pages a record is written into are populated first (first-touch hint; an
        address, not a callback, so the read never calls back into its caller).
        ``ahead``: ``(file, begin, end)`` ranges expected next, whose records are read
        ahead into the cache (see the module's doc).
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
        hits: list[tuple[_Task, Any]] = []  # pinned cached records: copied outside the lock
        waits: list[tuple[_Task, cf.Future[None]]] = []
        dst = _as_array(out)
        try:
            with self._lock:
                for k in range(begin // geo.chunk + 1, (end - 1) // geo.chunk + 2):
                    src_off, src_len, data_off, n = geo.span(k)
                    lo, hi = max(begin, data_off), min(end, data_off + n)
                    t = _Task(key, k, src_off, src_len, data_off, n, lo, hi, lo - begin)
                    cached = self._pin(t)
                    if cached is not None:
                        hits.append((t, cached))
                        continue
                    ahead_of = self._ahead.get((key, k))
                    if ahead_of is not None:
                        waits.append((t, ahead_of[0]))
                    else:
                        tasks.append(t)
                planned = self._plan_ahead(ahead) if ahead else []

            def copy_hits() -> None:
                while hits:
                    t, cached = hits.pop(0)
                    self._copy_out(t, cached, dst, populate)

            if len(tasks) > 1 and self.workers > 1:
                self._parallel(f, tasks, out, populate, planned, copy_hits)
            else:
                self._submit_ahead(planned)
                copy_hits()
                for t in tasks:
                    self._one(f, t, out, populate)
            for t, fut in waits:
                self._await_ahead(fut)
                with self._lock:
                    cached = self._pin(t)
                if cached is not None:
                    self._copy_out(t, cached, dst, populate)
                else:  # not read yet, failed or evicted: read it here
                    self._one(f, t, out, populate)
        except BaseException:
            for _, cached in hits:
                self._unpin(cached)
            out[:] = bytes(len(out))  # nothing partial reaches the caller
            raise

    def _pin(self, t: _Task) -> Any:
        """The cached, verified record of ``t``, pinned (not reused while pinned), or
        None (lock held)."""
        cached = self._cache.get((t.key, t.k))
        if cached is None:
            return None
        self._cache.move_to_end((t.key, t.k))
        self._pins[id(cached)] = self._pins.get(id(cached), 0) + 1
        self.stats.cache_hits += 1
        return cached

    def _unpin(self, buf: Any) -> None:
        with self._lock:
            left = self._pins[id(buf)] - 1
            if left:
                self._pins[id(buf)] = left
                return
            del self._pins[id(buf)]
            evicted = self._orphans.pop(id(buf), None)
            if evicted is not None:
                self._recycle(evicted)

    def _copy_out(self, t: _Task, cached: Any, dst: Any, populate: int | None) -> None:
        """Copy ``t``'s part of a pinned cached record out (numpy: without the GIL)."""
        import numpy as np

        try:
            if populate is not None:
                populate_for_write(populate + t.out_off, t.hi - t.lo)
            np.copyto(
                dst[t.out_off : t.out_off + (t.hi - t.lo)],
                cached[t.lo - t.data_off : t.hi - t.data_off],
            )
        finally:
            self._unpin(cached)

    def _await_ahead(self, fut: cf.Future[None]) -> None:
        """Wait for a record being read ahead; meanwhile this thread reads the records
        queued ahead that no worker took yet (the awaited one first)."""
        while not fut.done():
            with self._lock:
                queued = sorted(self._ahead.items(), key=lambda item: item[1][0] is not fut)
                taken = None
                for rec, (fu, f, t) in queued:
                    if fu.cancel():
                        del self._ahead[rec]
                        taken = (f, t)
                        break
            if taken is None:
                _wait([fut])
                return
            self._fetch(*taken)

    def _plan_ahead(self, ranges: Sequence[tuple[Any, int, int]]) -> list[tuple[Any, _Task]]:
        """Records of ``ranges`` to read ahead: not cached, not in flight, at most
        ``read_ahead`` of them, and only as many as the cache has free room for (lock
        held)."""
        want = self._read_ahead
        if want is None:
            want = max(2, self._workers or 2) + 1
        planned: list[tuple[Any, _Task]] = []
        seen: set[tuple[Any, int]] = set()
        for f, begin, end in ranges:
            geo = f.geometry
            if end <= begin or begin < 0 or end > geo.data_size:
                continue
            key = id(f)
            for k in range(begin // geo.chunk + 1, (end - 1) // geo.chunk + 2):
                rec = (key, k)
                if rec in seen or rec in self._cache or rec in self._ahead:
                    continue
                if len(planned) >= min(want, self.cache_bytes // (2 * geo.chunk)):
                    return planned
                room = self.cache_bytes - self._cached - len(self._ahead) * geo.chunk
                if (len(planned) + 1) * geo.chunk > room:
                    return planned  # it would evict cached records a tensor still needs
                seen.add(rec)
                src_off, src_len, data_off, n = geo.span(k)
                planned.append(
                    (f, _Task(key, k, src_off, src_len, data_off, n, data_off, data_off + n, 0))
                )
        return planned

    def release(self, f: Any, records: Iterable[int]) -> None:
        """Drop ``records`` of ``f`` from the cache (the caller needs them no more): their
        buffers go to reuse, or are wiped (a record being copied out: when done)."""
        with self._lock:
            for k in records:
                buf = self._cache.pop((id(f), k), None)
                if buf is None:
                    continue
                self._cached -= len(buf)
                if id(buf) in self._pins:
                    self._orphans[id(buf)] = buf
                else:
                    self._recycle(buf)

    def _get_pool(self) -> cf.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="wg-lazy"
            )
        return self._pool

    def _submit_ahead(self, planned: list[tuple[Any, _Task]]) -> None:
        """Read whole records into the cache on the pool, unless closed."""
        if not planned:
            return
        pool = self._get_pool()
        with self._lock:
            if self._closed:
                return
            for f, t in planned:
                if (t.key, t.k) not in self._ahead:
                    fut = pool.submit(self._fetch_ahead, f, t)
                    self._ahead[(t.key, t.k)] = (fut, f, t)

    def _fetch_ahead(self, f: Any, t: _Task) -> None:
        try:
            self._fetch(f, t)
        finally:
            with self._lock:
                self._ahead.pop((t.key, t.k), None)

    def _fetch(self, f: Any, t: _Task) -> None:
        """Read one record ahead into the cache; a failure is dropped (the request that
        needs the record reads it again and raises)."""
        try:
            if not self._closed:
                self._one(f, t, None, None)
        except Exception:  # noqa: S110 - see the docstring
            pass

    def _parallel(
        self,
        f: Any,
        tasks: list[_Task],
        out: memoryview,
        populate: int | None,
        planned: list[tuple[Any, _Task]],
        meanwhile: Any,
    ) -> None:
        pool = self._get_pool()
        stop = threading.Event()

        def run(t: _Task) -> None:
            if not stop.is_set():
                try:
                    self._one(f, t, out, populate)
                except BaseException:
                    stop.set()
                    raise

        futures = [(t, pool.submit(run, t)) for t in tasks]
        self._submit_ahead(planned)  # queued behind this request's own records
        errors: list[BaseException] = []
        try:
            meanwhile()
            for t, fu in futures:  # this thread reads the records no worker took yet
                if fu.cancel():
                    try:
                        run(t)
                    except Exception as exc:  # chosen among all errors below
                        errors.append(exc)
            _wait([fu for _, fu in futures])
        except BaseException:
            stop.set()
            cf.wait([fu for _, fu in futures])
            raise
        errors += [
            e for e in (fu.exception() for _, fu in futures if not fu.cancelled()) if e is not None
        ]
        if errors:
            raise next((e for e in errors if isinstance(e, IntegrityError)), errors[0])

    def _one(self, f: Any, t: _Task, out: memoryview | None, populate: int | None) -> None:
        """Read, check and decrypt record ``t.k``; its part ``[t.lo, t.hi)`` goes to
        ``out`` (None: the whole record only to the cache, read ahead)."""
        geo = f.geometry
        digest = None
        if geo.digests is not None:
            if t.k >= len(geo.digests):
                raise IntegrityError(
                    "the signature has no digest for this record", path=f.display, chunk=t.k
                )
            digest = geo.digests[t.k]
        dst = None if out is None else out[t.out_off : t.out_off + (t.hi - t.lo)]
        full = dst is not None and t.lo == t.data_off and t.hi == t.data_off + t.n
        if populate is not None and dst is not None:
            populate_for_write(populate + t.out_off, t.hi - t.lo)
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
                        plain = self._take_plain(t.n)
                        f.cipher.decrypt_record_into(t.k, ct, memoryview(plain))
                finally:
                    self._give_ct(buf)
                decrypted = t.n
            else:
                if full:
                    f.source.read_into(t.src_off, dst)
                    self._check(f, t, dst, digest)
                else:
                    plain = self._take_plain(t.n)
                    f.source.read_into(t.src_off, plain)
                    self._check(f, t, plain, digest)
                decrypted = 0
            if plain is not None and dst is not None:
                dst[:] = memoryview(plain)[t.lo - t.data_off : t.hi - t.data_off]
        except BaseException:
            if plain is not None:
                wipe(memoryview(plain))
            raise
        with self._lock:
            self.stats.records_read += 1
            self.stats.bytes_read += t.src_len
            self.stats.bytes_decrypted += decrypted
            if out is None:
                self.stats.read_ahead += 1
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

    def _take_plain(self, n: int) -> Any:
        """A record-sized plaintext buffer: one evicted from the cache, else fresh."""
        with self._lock:
            for i, b in enumerate(self._plain_free):
                if len(b) == n:
                    return self._plain_free.pop(i)
        return _uninitialized(n)

    @staticmethod
    def _check(f: Any, t: _Task, data: Any, digest: bytes | None) -> None:
        if digest is None:
            return
        if not digest_matches(data, digest, f.geometry.algorithm, path=f.display):
            raise IntegrityError(
                "chunk digest does not match the signed digest", path=f.display, chunk=t.k
            )

    def _keep(self, key: tuple[Any, int], plain: Any) -> None:
        """Cache a verified record (lock held); evict the oldest past the budget.

        An evicted record's buffer is kept (up to a few) for the next record read into
        the cache, which overwrites it whole; it stays private to the reader, and is
        wiped at :meth:`close` (or when more than those few are evicted)."""
        if self._closed or len(plain) > self.cache_bytes or key in self._cache:
            wipe(memoryview(plain))
            return
        self._cache[key] = plain
        self._cached += len(plain)
        while self._cached > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)
            if id(old) in self._pins:
                self._orphans[id(old)] = old
            else:
                self._recycle(old)

    def _recycle(self, buf: Any) -> None:
        """An evicted record's buffer: kept for reuse, or wiped (lock held)."""
        if not self._closed and len(self._plain_free) < 2 + (self._workers or 1):
            self._plain_free.append(buf)
        else:
            wipe(memoryview(buf))

    def close(self) -> None:
        """Stop the pool (records being read ahead are dropped) and wipe the cached
        plaintext.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cache, self._cache, self._cached = self._cache, OrderedDict(), 0
            free, self._ct_free, self._plain_free = self._plain_free, [], []
            for buf in cache.values():  # a copy out of it under way: wiped when done
                if id(buf) in self._pins:
                    self._orphans[id(buf)] = buf
            wiped = [b for b in [*cache.values(), *free] if id(b) not in self._orphans]
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for buf in wiped:  # a record finishing after this: see _keep
            wipe(memoryview(buf))

    def __del__(self) -> None:
        # Dropped without close() (a safe_open handle never closed): the verified
        # plaintext it holds is zeroed, not freed as is.  No lock (nothing else can
        # reach this reader now) and no wait (this may run on one of its own workers).
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for buf in [*self._cache.values(), *self._plain_free, *self._orphans.values()]:
            wipe(memoryview(buf))
        self._cache, self._plain_free, self._orphans = OrderedDict(), [], {}
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
