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
* a loop of ``get_tensor`` (:meth:`RangeReader.read_whole`, with the ranges it expects
  next: the lazy reader passes the next tensors of a caller walking ``keys()`` or
  ``offset_keys()`` in order) gets a record shared by several of those tensors
  decrypted **straight into their outputs**: the outputs of the tensors ahead are
  allocated when the first record holding their bytes is decrypted, and AES-GCM's
  streaming decryptor writes each tensor's piece into its own output (every byte written
  once, no copy out of a cache).  Nothing of a record is returned before its signed
  digest (over the ciphertext, before decryption) and its tag (at the end of the
  record) were checked; on a failure every piece of it is zeroed.  An output is
  returned once all its records were checked, and never written again; outputs of
  tensors the caller does not ask for next are zeroed (at the next request, at close,
  or when the reader is dropped).  Up to ``read_ahead`` records are read ahead on the
  reader's pool (outputs ahead bounded by the cache's budget), so the cores stay busy
  as in the loader's one pass.  A record holding bytes of a tensor outside the walk's
  window goes through the cache as above (read ahead only into free room of the
  cache, never evicting a record a tensor still to be returned needs).  A record that
  fails its checks while read ahead is dropped (its pieces zeroed, never cached); the
  request that needs it reads it again and raises the error.

On any failure the caller's buffer is zeroed and the first error is raised (an
:class:`IntegrityError` in preference to others).  Records of one request are read in
parallel by a pool the reader owns (the hashes and AES-GCM release the GIL); the pool
(and the count of usable cores it is sized by) is made only when a request needs more
than one record read, so an open that reads one record starts no thread.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import threading
from collections import OrderedDict
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weightguard._internal.foundation.memory import wipe
from weightguard._internal.load.copiers import populate_for_write
from weightguard._internal.load.pipeline import digest_matches
from weightguard.errors import ConfigError, IntegrityError

__all__ = ["RangeReader", "ReadStats"]

DEFAULT_CACHE_BYTES = 32 * 1024 * 1024

Ranges = tuple[Any, int, int]  # (file, begin, end) of data-section bytes


@dataclass
class ReadStats:
    records_read: int = 0  # records read from the source and checked
    bytes_read: int = 0  # source bytes of those records (ciphertext and tags included)
    bytes_decrypted: int = 0  # plaintext bytes produced by AEAD decryption
    cache_hits: int = 0  # edge records served from the verified cache
    read_ahead: int = 0  # of records_read: read ahead of a sequential caller
    direct: int = 0  # of records_read: decrypted straight into the outputs of a loop


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


@dataclass(eq=False)
class _Out:
    """The output of one whole tensor of a loop (see :meth:`RangeReader.read_whole`),
    written record by record straight from the decryptor; private to the reader until
    returned (then never written again)."""

    key: Any
    begin: int
    end: int
    t: Any  # uint8 torch tensor, handed to the caller once every record was checked
    mv: memoryview  # its bytes
    ptr: int  # its address (pages populated before they are written)
    need: set[int]  # records whose part is not yet written from a checked record
    ahead: bool  # allocated ahead of its request (counted in the reader's _out_bytes)
    dropped: bool = False  # not asked for: zeroed (a piece written later is zeroed too)


_QUEUED, _RUNNING, _DONE = 0, 1, 2


class _Wanted:
    """The whole tensors a loop will still ask for: this request's, and those after
    position ``at`` in the loop's order (``(id(file), begin, end)`` -> position)."""

    __slots__ = ("at", "current", "order")

    def __init__(self, current: Ranges, order: Mapping[Ranges, int] | None, at: int) -> None:
        self.current, self.order, self.at = current, order or {}, at

    def __contains__(self, r: object) -> bool:
        return r == self.current or self.order.get(r, -1) > self.at  # type: ignore[call-overload]


class _Fill:
    """One record to read, check and decrypt into the outputs holding its bytes.

    Registered (by record) before it is queued, so a record has one job at a time; run
    once, by a worker or by a caller that needs it and finds it not started yet."""

    __slots__ = ("ahead", "done", "f", "k", "pieces", "state")

    def __init__(self, f: Any, k: int, pieces: list[tuple[int, int, _Out | None]], ahead: bool):
        self.f, self.k, self.pieces, self.ahead = f, k, pieces, ahead
        self.state = _QUEUED
        self.done = threading.Event()


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


def _bytes_of(t: Any) -> memoryview:
    """A writable byte view of a CPU uint8 tensor (shares its memory)."""
    return memoryview(t.numpy())


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
        # outputs of whole tensors of a loop, by (file, begin, end), and records being
        # decrypted into them (see read_whole)
        self._outs: dict[tuple[Any, int, int], _Out] = {}
        self._out_bytes = 0  # of the outputs allocated ahead, not asked for yet
        self._order: Mapping[Ranges, int] | None = None  # of the loop they were made for
        self._fills: dict[tuple[Any, int], _Fill] = {}
        self._tables: dict[Any, tuple[list[int], list[Any]]] = {}  # file -> tensors by offset
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
    ) -> None:
        """Fill ``out`` (``end - begin`` bytes) with data-section bytes ``[begin, end)``.

        ``f`` is an opened :class:`~weightguard._internal.load.model_files.ModelFile`
        (its geometry, source and cipher).  ``populate``, if given, is ``out``'s address:
        the pages a record is written into are populated first (first-touch hint; an
        address, not a callback, so the read never calls back into its caller).
        """
        self._check_request(f, begin, end)
        if end - begin != len(out):
            raise ValueError("buffer size does not match the range")  # pragma: no cover
        if end <= begin:
            return
        geo = f.geometry
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

            def copy_hits() -> None:
                while hits:
                    t, cached = hits.pop(0)
                    self._copy_out(t, cached, dst, populate)

            if len(tasks) > 1 and self.workers > 1:
                self._parallel(f, tasks, out, populate, copy_hits)
            else:
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

    def _check_request(self, f: Any, begin: int, end: int) -> None:
        if self._closed:
            raise ConfigError("the reader is closed", hint="open the model again")
        size = f.geometry.data_size
        if end > begin and (begin < 0 or end > size):
            raise IntegrityError(
                f"bytes [{begin}, {end}) are outside the data section ({size} bytes)",
                path=f.display,
            )

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

    # -- whole tensors of a loop: records decrypted straight into their outputs ---------
    def read_whole(
        self,
        f: Any,
        begin: int,
        end: int,
        *,
        ahead: Sequence[Ranges] = (),
        order: tuple[Mapping[Ranges, int], int] | None = None,
    ) -> Any:
        """Data-section bytes ``[begin, end)`` of one whole tensor of ``f``, as a fresh
        ``uint8`` torch tensor (the caller's: the reader never writes it again).

        A loop of ``get_tensor`` passes ``ahead``, ``(file, begin, end)`` of the whole
        tensors it asks for next (their records are read ahead), and ``order``: its
        order, as ``(id(file), begin, end)`` -> position, and this request's position
        (the tensors it will still ask for).  A record whose bytes all belong to those
        tensors is decrypted straight into their outputs (see the module's doc).  With
        no ``ahead`` and no output prepared for this range, this is :meth:`read` into a
        new tensor.  On a failure nothing is returned: this output and every output
        prepared ahead are zeroed, and the first error is raised.
        """
        import torch

        self._check_request(f, begin, end)
        if end <= begin:
            return torch.empty(0, dtype=torch.uint8)
        key = id(f)
        wanted = _Wanted((key, begin, end), *(order if ahead and order else (None, 0)))
        with self._lock:
            out = self._outs.get((key, begin, end))
            if out is not None and not out.ahead:
                out = None  # another thread's request for it is under way: read our own
            elif out is not None:
                out.ahead = False  # the caller's now
                self._out_bytes -= end - begin
            elif ahead:
                out = self._new_out(f, begin, end, ahead=False)
            dropped = []
            if wanted.order is not self._order or not ahead:  # the loop ended or changed
                self._order = wanted.order if ahead else None
                dropped = self._drop_outs(wanted)  # prepared for what is not asked for
        self._wipe_outs(dropped)
        if out is None:
            t = torch.empty(end - begin, dtype=torch.uint8)
            self.read(f, begin, end, _bytes_of(t), populate=int(t.data_ptr()))
            return t
        try:
            self._complete(f, out, wanted, ahead)
        except BaseException:
            with self._lock:
                if self._outs.get((key, begin, end)) is out:
                    del self._outs[(key, begin, end)]
                out.dropped = True
                dropped = self._drop_outs(())  # every output prepared ahead
            self._wipe_outs([out, *dropped])
            raise
        with self._lock:
            if self._outs.get((key, begin, end)) is not out:
                # closed meanwhile (another thread): close() dropped and zeroed it
                raise ConfigError("the reader is closed", hint="open the model again")
            del self._outs[(key, begin, end)]
        return out.t

    def _complete(self, f: Any, out: _Out, wanted: _Wanted, ahead: Sequence[Ranges]) -> None:
        """Write every record's part of ``out``: copied from the cache, decrypted here
        (with the other outputs sharing the record), or awaited from a record in flight;
        the first pass also starts the records ahead.  A record in flight that failed is
        read here again (which raises)."""
        geo = f.geometry
        planned = False
        while True:
            hits: list[tuple[_Task, Any]] = []
            legacy: list[_Task] = []
            mine: list[_Fill] = []
            waits: list[_Fill] = []
            fetches: list[cf.Future[None]] = []
            with self._lock:
                if self._closed:
                    raise ConfigError("the reader is closed", hint="open the model again")
                if not out.need:
                    return
                for k in sorted(out.need):
                    src_off, src_len, data_off, n = geo.span(k)
                    lo, hi = max(out.begin, data_off), min(out.end, data_off + n)
                    t = _Task(out.key, k, src_off, src_len, data_off, n, lo, hi, lo - out.begin)
                    job = self._fills.get((out.key, k))  # first: it may write into out
                    cached = None if job is not None else self._pin(t)
                    busy = job is not None or cached is not None
                    fetch = None if busy else self._ahead.get((out.key, k))
                    if job is not None:
                        waits.append(job)
                    elif cached is not None:
                        hits.append((t, cached))
                    elif fetch is not None:
                        fetches.append(fetch[0])
                    else:
                        job = self._plan_fill(f, k, wanted, ahead=False)
                        if job is None:
                            legacy.append(t)
                        else:
                            mine.append(job)
                fills, tasks = self._plan(ahead, wanted) if not planned else ([], [])
                planned = True
            self._submit([*mine[1:], *fills], tasks)  # this request's own records first
            dst = self._arr(out)
            try:
                while hits:
                    t, cached = hits.pop(0)
                    self._copy_out(t, cached, dst, out.ptr)
                    self._written(out, t.k)
                if len(legacy) > 1 and self.workers > 1:
                    self._parallel(f, legacy, memoryview(dst), out.ptr, lambda: None)
                else:
                    for t in legacy:
                        self._one(f, t, memoryview(dst), out.ptr)
                for t in legacy:
                    self._written(out, t.k)
                for job in mine:
                    self._run(job, raising=True)
                for job in [*mine, *waits]:
                    self._await_fill(job)
                for fut in fetches:
                    self._await_ahead(fut)
            finally:
                for _, cached in hits:
                    self._unpin(cached)

    def _written(self, out: _Out, k: int) -> None:
        with self._lock:
            out.need.discard(k)

    @staticmethod
    def _arr(out: _Out) -> Any:
        import numpy as np

        return np.frombuffer(out.mv, dtype=np.uint8)

    def _new_out(self, f: Any, begin: int, end: int, *, ahead: bool) -> _Out:
        """A fresh output for the whole tensor ``[begin, end)`` of ``f`` (lock held)."""
        import torch

        chunk = f.geometry.chunk
        t = torch.empty(end - begin, dtype=torch.uint8)
        need = set(range(begin // chunk + 1, (end - 1) // chunk + 2))
        out = _Out(id(f), begin, end, t, _bytes_of(t), int(t.data_ptr()), need, ahead)
        self._outs[(id(f), begin, end)] = out
        if ahead:
            self._out_bytes += end - begin
        return out

    def _drop_outs(self, keep: Container[Ranges]) -> list[_Out]:
        """Outputs prepared ahead and not in ``keep``: dropped, to be zeroed (lock held;
        a record still being decrypted into one zeroes its piece when done)."""
        dropped = []
        for rk, o in list(self._outs.items()):
            if o.ahead and rk not in keep:
                del self._outs[rk]
                o.dropped = True
                self._out_bytes -= o.end - o.begin
                dropped.append(o)
        return dropped

    @staticmethod
    def _wipe_outs(outs: Iterable[_Out]) -> None:
        for o in outs:
            wipe(o.mv)

    def _overlapping(self, f: Any, lo: int, hi: int) -> Iterator[Any]:
        """The (non-empty) tensors of ``f`` holding bytes of ``[lo, hi)``, by offset."""
        table = self._tables.get(id(f))
        if table is None:
            infos = sorted((t for t in f.tensors if t.end > t.begin), key=lambda t: t.begin)
            table = self._tables[id(f)] = ([t.end for t in infos], infos)
        ends, infos = table
        i = bisect.bisect_right(ends, lo)
        while i < len(infos) and infos[i].begin < hi:
            yield infos[i]
            i += 1

    def _plan_fill(self, f: Any, k: int, wanted: _Wanted, *, ahead: bool) -> _Fill | None:
        """A job decrypting record ``k`` straight into the outputs of the tensors holding
        its bytes (made for those that have none), registered; None when the file is not
        encrypted, a tensor outside ``wanted`` holds some of its bytes, or new outputs
        would pass the budget (the record then goes through the cache).  Lock held."""
        if f.cipher is None:
            return None
        _, _, data_off, n = f.geometry.span(k)
        key = id(f)
        pieces: list[tuple[int, int, _Out | None]] = []
        new: list[tuple[int, Any]] = []
        at = data_off
        for info in self._overlapping(f, data_off, data_off + n):
            lo, hi = max(info.begin, data_off), min(info.end, data_off + n)
            if lo > at:
                pieces.append((at, lo, None))  # between tensors: decrypted, then wiped
            o = self._outs.get((key, info.begin, info.end))
            if o is not None and not o.ahead and (key, info.begin, info.end) != wanted.current:
                return None  # another thread's request: only it writes its output
            if o is None:
                if (key, info.begin, info.end) not in wanted:
                    return None
                new.append((len(pieces), info))
            pieces.append((lo, hi, o if o is not None and k in o.need else None))
            at = hi
        if at < data_off + n:
            pieces.append((at, data_off + n, None))
        if self._out_bytes + sum(info.end - info.begin for _, info in new) > self.cache_bytes:
            return None
        for i, info in new:
            o = self._new_out(f, info.begin, info.end, ahead=True)
            pieces[i] = (pieces[i][0], pieces[i][1], o)
        job = _Fill(f, k, pieces, ahead)
        self._fills[(key, k)] = job
        return job

    def _plan(
        self, ranges: Sequence[Ranges], wanted: _Wanted
    ) -> tuple[list[_Fill], list[tuple[Any, _Task]]]:
        """Records of ``ranges`` (the tensors expected next) to read ahead, lock held:
        not written yet, not cached, not in flight, at most ``read_ahead`` in flight.  A
        record is decrypted straight into its tensors' outputs when it can be (see
        :meth:`_plan_fill`), else into free room of the cache (never evicting a record a
        tensor still needs: that record would be read twice)."""
        want = self._read_ahead
        if want is None:
            want = max(2, self._workers or 2) + 1
        busy = len(self._ahead) + sum(1 for j in self._fills.values() if j.ahead)
        fills: list[_Fill] = []
        legacy: list[tuple[Any, _Task]] = []
        if not ranges or self.cache_bytes <= 0 or busy >= want:
            return fills, legacy
        for f, begin, end in ranges:
            geo = f.geometry
            if end <= begin or begin < 0 or end > geo.data_size:
                continue
            key = id(f)
            for k in range(begin // geo.chunk + 1, (end - 1) // geo.chunk + 2):
                rec = (key, k)
                if rec in self._cache or rec in self._ahead or rec in self._fills:
                    continue
                out = self._outs.get((key, begin, end))
                if out is not None and k not in out.need:
                    continue
                if busy + len(fills) + len(legacy) >= want:
                    return fills, legacy
                job = self._plan_fill(f, k, wanted, ahead=True)
                if job is not None:
                    fills.append(job)
                    continue
                if len(legacy) >= self.cache_bytes // (2 * geo.chunk):
                    return fills, legacy
                room = self.cache_bytes - self._cached - len(self._ahead) * geo.chunk
                if (len(legacy) + 1) * geo.chunk > room:
                    return fills, legacy  # it would evict cached records a tensor still needs
                src_off, src_len, data_off, n = geo.span(k)
                t = _Task(key, k, src_off, src_len, data_off, n, data_off, data_off + n, 0)
                legacy.append((f, t))
        return fills, legacy

    def _submit(self, jobs: list[_Fill], tasks: list[tuple[Any, _Task]]) -> None:
        """Queue record jobs, then whole records to read ahead into the cache, on the
        pool (unless closed)."""
        if not jobs and not tasks:
            return
        pool = self._get_pool()
        with self._lock:
            if self._closed:
                return
            for job in jobs:
                pool.submit(self._run, job)
            for f, t in tasks:
                if (t.key, t.k) not in self._ahead:
                    fut = pool.submit(self._fetch_ahead, f, t)
                    self._ahead[(t.key, t.k)] = (fut, f, t)

    def _run(self, job: _Fill, *, raising: bool = False) -> bool:
        """Run ``job`` here unless someone already did or does (False).  A failure is
        raised if ``raising``, else dropped (its pieces zeroed; the request that needs the
        record reads it again and raises)."""
        with self._lock:
            if job.state != _QUEUED:
                return False
            job.state = _RUNNING
        try:
            self._fill(job)
        except Exception:
            if raising:
                raise
        finally:
            with self._lock:
                if self._fills.get((id(job.f), job.k)) is job:
                    del self._fills[(id(job.f), job.k)]
                job.state = _DONE
            job.done.set()
        return True

    def _await_fill(self, job: _Fill) -> None:
        """Wait for ``job``; meanwhile this thread runs jobs no worker started (that one
        first)."""
        while not job.done.is_set():
            if self._run(job):
                continue
            with self._lock:
                if self._closed:
                    return
                other = next((j for j in self._fills.values() if j.state == _QUEUED), None)
            if other is None:
                job.done.wait(0.1)
            else:
                self._run(other)

    def _fill(self, job: _Fill) -> None:
        """Read record ``job.k``, check it against its signed digest, and decrypt it
        straight into the outputs of its pieces (AES-GCM's streaming decryptor, the tag
        checked at the end: on a failure every piece is zeroed)."""
        if self._closed:
            return
        f, k = job.f, job.k
        digest = self._digest(f, k)
        src_off, src_len, _, n = f.geometry.span(k)
        views: list[memoryview] = []
        buf = self._take_ct(src_len)
        try:
            ct = memoryview(buf)[:src_len]
            f.source.read_into(src_off, ct)
            self._check(f, k, ct, digest)
            for lo, hi, o in job.pieces:
                if o is None:
                    views.append(memoryview(bytearray(hi - lo)))
                else:
                    populate_for_write(o.ptr + lo - o.begin, hi - lo)
                    views.append(o.mv[lo - o.begin : hi - o.begin])
            f.cipher.decrypt_record_pieces(k, ct, views)
        except BaseException:
            self._wipe_views(views)
            raise
        finally:
            self._give_ct(buf)
        spare = [v for v, (_, _, o) in zip(views, job.pieces, strict=True) if o is None]
        with self._lock:
            self.stats.records_read += 1
            self.stats.bytes_read += src_len
            self.stats.bytes_decrypted += n
            self.stats.direct += 1
            self.stats.read_ahead += job.ahead
            for v, (_, _, o) in zip(views, job.pieces, strict=True):
                if o is not None:
                    o.need.discard(k)
                    if o.dropped:
                        spare.append(v)  # dropped meanwhile: zeroed by whoever writes last
        self._wipe_views(spare)

    @staticmethod
    def _wipe_views(views: Iterable[memoryview]) -> None:
        for v in views:
            wipe(v)

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
        digest = self._digest(f, t.k)
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
                    self._check(f, t.k, ct, digest)
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
                    self._check(f, t.k, dst, digest)
                else:
                    plain = self._take_plain(t.n)
                    f.source.read_into(t.src_off, plain)
                    self._check(f, t.k, plain, digest)
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
    def _digest(f: Any, k: int) -> bytes | None:
        """Record ``k``'s signed digest (None: the model is not signed per record)."""
        digests = f.geometry.digests
        if digests is None:
            return None
        if k >= len(digests):
            raise IntegrityError(
                "the signature has no digest for this record", path=f.display, chunk=k
            )
        return digests[k]

    @staticmethod
    def _check(f: Any, k: int, data: Any, digest: bytes | None) -> None:
        if digest is None:
            return
        if not digest_matches(data, digest, f.geometry.algorithm, path=f.display):
            raise IntegrityError(
                "chunk digest does not match the signed digest", path=f.display, chunk=k
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
        """Stop the pool (records being read ahead are dropped), zero the outputs
        prepared ahead and wipe the cached plaintext.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            outs = self._drop_outs(())
            for o in self._outs.values():  # a request under way in another thread: refused
                o.dropped = True
                outs.append(o)
            self._outs.clear()
            jobs = list(self._fills.values())
            self._fills.clear()
            cache, self._cache, self._cached = self._cache, OrderedDict(), 0
            free, self._ct_free, self._plain_free = self._plain_free, [], []
            for buf in cache.values():  # a copy out of it under way: wiped when done
                if id(buf) in self._pins:
                    self._orphans[id(buf)] = buf
            wiped = [b for b in [*cache.values(), *free] if id(b) not in self._orphans]
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._wipe_outs(outs)  # every job that could write into them has ended
        for job in jobs:  # never started: nobody waits for them any more
            job.done.set()
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
        self._wipe_outs(self._outs.values())  # outputs prepared ahead, never returned
        self._cache, self._plain_free, self._orphans, self._outs = OrderedDict(), [], {}, {}
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
