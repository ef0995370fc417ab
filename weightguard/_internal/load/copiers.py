"""Copiers: where the loader's verified plaintext goes (CPU tensors or CUDA memory).

One interface, one implementation per kind of destination, chosen by device (like
fastsafetensors' copier registry):

* :class:`CpuCopier` -- plaintext is written straight into the final tensors' memory:
  one ``uint8`` tensor per file segment; ``acquire`` returns a view of it.
* :class:`StagingCopier` -- for devices the CPU cannot write directly (CUDA): plaintext
  goes into a slot of a pinned host staging ring; ``commit`` enqueues a ``non_blocking``
  copy on the worker's CUDA stream into one device allocation per segment and records an
  event; a slot is reused only once its event completed, and is zeroed as soon as it is
  reclaimed and when the load ends (success or failure).  Host memory stays bounded by
  the ring whatever the model size.  With ``device="cpu"`` it runs synchronously on
  unpinned memory (used by tests to exercise the ring without a GPU).

Protocol, per record (called from worker threads):
``out = acquire(worker, seg, off, n)``; fill ``out`` (``n`` bytes); ``commit(...)``;
on a failure between the two, ``abandon(worker, out)``.
At the end: ``finish()`` returns the segment tensors; on failure ``discard()`` zeroes and
frees everything written so far.  ``close()`` always runs and zeroes the staging memory.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weightguard._internal.foundation.memory import wipe
from weightguard.errors import DeviceError

__all__ = [
    "DEFAULT_RING_BYTES",
    "Copier",
    "CpuCopier",
    "FileCopier",
    "StagingCopier",
    "copier_for",
    "register_copier",
]

DEFAULT_RING_BYTES = 256 * 1024 * 1024


def _np_view(t: Any) -> memoryview:
    """A writable byte memoryview of a CPU uint8 tensor (shares memory)."""
    return memoryview(t.numpy()).cast("B")


_HUGE = 2 * 1024 * 1024
_PAGE = 4096
_MADV_HUGEPAGE = 14
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14
_madvise: Any = None
_populate_ok = True


def _libc_madvise() -> Any:
    """libc's madvise, or False where it cannot be had (not glibc/Linux)."""
    global _madvise
    if _madvise is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
            _madvise = False
    return _madvise


def populate_for_write(ptr: int, n: int) -> None:
    """Map the pages of ``[ptr, ptr + n)`` writable in one call before they are written.

    The first write into fresh anonymous memory otherwise takes one page fault per 4 KiB,
    which in a VM costs about as much as the AES-GCM pass itself (measured here:
    populating 1 GiB in bulk 0.4 CPU-s, faulting it page by page under a parallel copy
    1.3-3.9 CPU-s).  Each worker populates its own record's range, so this runs in
    parallel.  Best effort: a kernel without MADV_POPULATE_WRITE turns it off.
    """
    global _populate_ok
    if not _populate_ok or n < 16 * _PAGE:
        return
    fn = _libc_madvise()
    if not fn:
        _populate_ok = False
        return
    start = ptr // _PAGE * _PAGE
    if fn(start, ptr + n - start, _MADV_POPULATE_WRITE) != 0:
        _populate_ok = False


def advise_huge_pages(t: Any) -> bool:
    """Ask Linux to back a fresh CPU tensor's memory with transparent huge pages.

    The pipeline writes every byte of the destination once; with 4 KiB pages the first
    touch of each page is a fault (~0.6 CPU-s/GB here, as much as the AES-GCM pass),
    with 2 MiB pages it is ~1/500 of that.  Only the 2 MiB-aligned interior is advised.
    Best effort: returns False where madvise is unavailable or refused (THP "never").
    """
    if os.environ.get("WEIGHTGUARD_HUGE_PAGES", "0").strip().lower() not in ("1", "true", "yes"):
        return False
    n = t.numel() * t.element_size()
    if n < 2 * _HUGE or not hasattr(os, "sched_getaffinity"):  # Linux only
        return False
    madvise = _libc_madvise()
    if not madvise:
        return False
    ptr = int(t.data_ptr())
    start = (ptr + _HUGE - 1) // _HUGE * _HUGE
    end = (ptr + n) // _HUGE * _HUGE
    if end <= start:
        return False
    return bool(madvise(start, end - start, _MADV_HUGEPAGE) == 0)


class Copier:
    """Destination of the pipeline's verified plaintext."""

    device: str

    def allocate(self, sizes: list[int]) -> None:
        """Allocate one destination buffer per segment (raises DeviceError on OOM)."""
        raise NotImplementedError

    def acquire(self, worker: int, seg: int, off: int, n: int) -> memoryview:
        raise NotImplementedError

    def commit(self, worker: int, seg: int, off: int, n: int, out: memoryview) -> None:
        raise NotImplementedError

    def abandon(self, worker: int, out: memoryview) -> None:
        raise NotImplementedError

    def finish(self) -> list[Any]:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        return None

    def staging_views(self) -> list[memoryview]:
        """Host staging memory (for tests: it must be zero after a load)."""
        return []


def _oom(device: str, n: int) -> DeviceError:
    return DeviceError(
        f"out of memory on {device} allocating {n} bytes for the model",
        hint="free device memory, load fewer tensors (open_model(...).load(names)) "
        "or load to another device",
    )


class CpuCopier(Copier):
    """Plaintext straight into the final CPU tensors."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._bufs: list[Any] = []
        self._views: list[memoryview] = []
        self._ptrs: list[int] = []

    def allocate(self, sizes: list[int]) -> None:
        import torch

        for n in sizes:
            try:
                t = torch.empty(n, dtype=torch.uint8)
            except (RuntimeError, MemoryError) as exc:
                self.discard()
                raise _oom("cpu", n) from exc
            advise_huge_pages(t)
            self._bufs.append(t)
            self._views.append(_np_view(t))
            self._ptrs.append(int(t.data_ptr()))

    def acquire(self, worker: int, seg: int, off: int, n: int) -> memoryview:
        populate_for_write(self._ptrs[seg] + off, n)
        return self._views[seg][off : off + n]

    def commit(self, worker: int, seg: int, off: int, n: int, out: memoryview) -> None:
        return None

    def abandon(self, worker: int, out: memoryview) -> None:
        return None  # discard() zeroes the whole buffer

    def finish(self) -> list[Any]:
        out, self._bufs = self._bufs, []
        self._views = []
        self._ptrs = []
        return out

    def discard(self) -> None:
        for t in self._bufs:
            t.zero_()
        self._bufs = []
        self._views = []
        self._ptrs = []


@dataclass
class _Slot:
    tensor: Any  # uint8 host tensor (pinned for CUDA)
    view: memoryview
    event: Any = None  # torch.cuda.Event of the copy reading it, None when idle


class StagingCopier(Copier):
    """Pinned host staging ring + async copies into one device allocation per segment."""

    def __init__(self, device: str, *, slot_bytes: int, ring_bytes: int, workers: int) -> None:
        import torch

        self.device = device
        self._torch = torch
        self._cuda = torch.device(device).type == "cuda"
        if self._cuda and not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} requested but CUDA is not available",
                hint="install a CUDA build of torch on a GPU machine, or load to cpu",
            )
        slot_bytes = max(1, slot_bytes)
        n_slots = max(2, min(ring_bytes // slot_bytes, 2 * max(1, workers) + 2))
        self.ring_bytes = n_slots * slot_bytes
        self._dev = torch.device(device)
        self._ring = torch.empty(self.ring_bytes, dtype=torch.uint8, pin_memory=self._cuda)
        self._ring.zero_()
        ring_view = _np_view(self._ring)
        self._slots = [
            _Slot(
                self._ring[i * slot_bytes : (i + 1) * slot_bytes],
                ring_view[i * slot_bytes : (i + 1) * slot_bytes],
            )
            for i in range(n_slots)
        ]
        self._free: deque[_Slot] = deque(self._slots)
        self._pending: deque[_Slot] = deque()
        self._by_view: dict[int, _Slot] = {}
        self._cond = threading.Condition()
        self._bufs: list[Any] = []
        self._streams: dict[int, Any] = {}
        self._streams_lock = threading.Lock()
        self._ready: Any = None  # event: the device buffers may be written from side streams
        self._closed = False

    # -- allocation -----------------------------------------------------------------
    def allocate(self, sizes: list[int]) -> None:
        torch = self._torch
        for n in sizes:
            try:
                t = torch.empty(n, dtype=torch.uint8, device=self._dev)
            except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as exc:
                self.discard()
                raise _oom(self.device, n) from exc
            self._bufs.append(t)
        if self._cuda:
            # The caching allocator may hand out blocks whose previous owner still has
            # work queued on the current stream: the worker streams wait for it first.
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(self._dev))

    def _stream(self, worker: int) -> Any:
        if not self._cuda:
            return None
        with self._streams_lock:
            s = self._streams.get(worker)
            if s is None:
                s = self._torch.cuda.Stream(device=self._dev)
                if self._ready is not None:
                    s.wait_event(self._ready)
                self._streams[worker] = s
        return s

    # -- ring -----------------------------------------------------------------------
    def _reclaim_done(self) -> None:
        """Move slots whose copy finished back to the free list, zeroed (lock held)."""
        still: deque[_Slot] = deque()
        while self._pending:
            slot = self._pending.popleft()
            if slot.event is None or slot.event.query():
                slot.event = None
                slot.tensor.zero_()
                self._free.append(slot)
            else:
                still.append(slot)
        self._pending = still

    def acquire(self, worker: int, seg: int, off: int, n: int) -> memoryview:
        with self._cond:
            while True:
                self._reclaim_done()
                if self._free:
                    slot = self._free.popleft()
                    break
                if self._pending:
                    slot = self._pending.popleft()
                    if slot.event is not None:
                        slot.event.synchronize()
                    slot.event = None
                    slot.tensor.zero_()
                    break
                self._cond.wait(0.05)  # every slot is being filled by another worker
            view = slot.view[:n]
            self._by_view[id(view)] = slot
            return view

    def commit(self, worker: int, seg: int, off: int, n: int, out: memoryview) -> None:
        with self._cond:
            slot = self._by_view.pop(id(out))
        dst = self._bufs[seg][off : off + n]
        if self._cuda:
            stream = self._stream(worker)
            with self._torch.cuda.stream(stream):
                dst.copy_(slot.tensor[:n], non_blocking=True)
                ev = self._torch.cuda.Event()
                ev.record(stream)
            slot.event = ev
        else:
            dst.copy_(slot.tensor[:n])
            slot.event = None
        with self._cond:
            self._pending.append(slot)
            self._cond.notify()

    def abandon(self, worker: int, out: memoryview) -> None:
        with self._cond:
            slot = self._by_view.pop(id(out), None)
            if slot is not None:
                slot.tensor.zero_()
                slot.event = None
                self._free.append(slot)
                self._cond.notify()

    # -- end ------------------------------------------------------------------------
    def _drain(self) -> None:
        if self._cuda:
            for s in self._streams.values():
                s.synchronize()
        with self._cond:
            self._reclaim_done()
            for slot in self._slots:
                slot.event = None
            self._ring.zero_()

    def finish(self) -> list[Any]:
        self._drain()
        out, self._bufs = self._bufs, []
        return out

    def discard(self) -> None:
        self._drain()
        for t in self._bufs:
            t.zero_()
        if self._cuda and self._bufs:
            self._torch.cuda.synchronize(self._dev)
        self._bufs = []
        if self._cuda:
            self._torch.cuda.empty_cache()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._drain()
        finally:
            self._streams = {}

    def staging_views(self) -> list[memoryview]:
        return [_np_view(self._ring)]


class FileCopier(Copier):
    """Plaintext written straight into an open output file (``weightguard fetch``).

    Segment ``k`` starts at file offset ``base + sum(sizes[:k])`` (the segments of a
    whole-file plan are one contiguous run).  Each worker owns one reused buffer of
    ``slot_bytes``: a record is decrypted into it, written with ``os.pwrite`` and the
    buffer is zeroed at once, so at most ``workers * slot_bytes`` plaintext bytes are
    ever in process memory whatever the file size.  ``discard`` does nothing: the caller
    removes the (temporary) output file.
    """

    def __init__(self, fd: int, *, base: int, slot_bytes: int, path: str = "") -> None:
        self.device = "file"
        self._fd = fd
        self._base = base
        self._slot_bytes = max(1, slot_bytes)
        self._path = path
        self._starts: list[int] = []
        self._bufs: dict[int, bytearray] = {}
        self._lock = threading.Lock()

    def allocate(self, sizes: list[int]) -> None:
        pos = self._base
        for n in sizes:
            self._starts.append(pos)
            pos += n

    def acquire(self, worker: int, seg: int, off: int, n: int) -> memoryview:
        with self._lock:
            buf = self._bufs.get(worker)
            if buf is None:
                buf = self._bufs[worker] = bytearray(self._slot_bytes)
        return memoryview(buf)[:n]

    def commit(self, worker: int, seg: int, off: int, n: int, out: memoryview) -> None:
        try:
            pos, done = self._starts[seg] + off, 0
            while done < n:
                done += os.pwrite(self._fd, out[done:n], pos + done)
        finally:
            wipe(out)

    def abandon(self, worker: int, out: memoryview) -> None:
        wipe(out)

    def finish(self) -> list[Any]:
        return []

    def discard(self) -> None:
        return None

    def close(self) -> None:
        with self._lock:
            for buf in self._bufs.values():
                wipe(buf)

    def staging_views(self) -> list[memoryview]:
        return [memoryview(b) for b in self._bufs.values()]


CopierFactory = Callable[..., Copier]
_REGISTRY: dict[str, CopierFactory] = {}


def register_copier(device_type: str, factory: CopierFactory) -> None:
    """Register the copier for a torch device type (``"cpu"``, ``"cuda"``, ...)."""
    _REGISTRY[device_type] = factory


def _cpu_factory(device: str, **_: Any) -> Copier:
    return CpuCopier(device)


def _staging_factory(device: str, *, slot_bytes: int, ring_bytes: int, workers: int) -> Copier:
    return StagingCopier(device, slot_bytes=slot_bytes, ring_bytes=ring_bytes, workers=workers)


register_copier("cpu", _cpu_factory)
register_copier("cuda", _staging_factory)
register_copier("staging", _staging_factory)  # tests: the CUDA ring logic on the CPU


def copier_for(
    device: str, *, slot_bytes: int, ring_bytes: int = DEFAULT_RING_BYTES, workers: int = 1
) -> Copier:
    """The copier for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    kind = device.split(":", 1)[0]
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise DeviceError(f"cannot load to device {device!r}", hint="use 'cpu' or 'cuda[:N]'")
    if kind == "staging":
        device = "cpu"
    return factory(device, slot_bytes=slot_bytes, ring_bytes=ring_bytes, workers=workers)
