"""Copiers: where the loader's verified plaintext goes (CPU tensors or CUDA memory).

One interface, one implementation per kind of destination, chosen by device (like
fastsafetensors' copier registry):

* :class:`CpuCopier` -- plaintext is written straight into the final tensors' memory:
  one ``uint8`` tensor per file segment; ``acquire`` returns a view of it.
* :class:`StagingCopier` -- for devices the CPU cannot write directly (CUDA), through a
  :class:`~weightguard._internal.devices.DeviceBackend` (the seam tests drive with a fake
  asynchronous device): a record goes into a slot of a page-locked host ring;
  ``commit`` enqueues its copies on the worker's stream and records an event; a slot is
  reused only once its event completed.  A slot that held plaintext is zeroed as soon
  as it is reclaimed (outside the copier's lock); one that held only ciphertext is not
  (the whole ring is wiped once when the load ends, success or failure).  Host memory
  stays bounded by the ring whatever the model size.  Tensors sit at
  ``backend.align``-byte offsets (256 on CUDA: cuBLASLt's fp8 and vectorised kernels
  need aligned pointers), gaps are zero.  With ``decrypt=True`` the slot holds
  CIPHERTEXT (its signed digest and GCM tag checked on the CPU), decrypted on the
  device by the AES-CTR kernel (:mod:`weightguard._internal.devices.aes_ctr_triton`).

Protocol, per record (called from worker threads, each inside ``worker_context()``):
``out = acquire(worker, rec)``; fill ``out``; ``commit(worker, rec, out)``;
on a failure between the two, ``abandon(worker, out)``.
At the end: ``finish()`` returns the segment tensors; on failure ``discard()`` zeroes and
frees everything written so far.  ``close()`` always runs and zeroes the staging memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weightguard._internal.devices import DeviceBackend, get_backend
from weightguard._internal.devices import pinned as pinned_pool
from weightguard._internal.foundation.memory import wipe

if TYPE_CHECKING:
    from weightguard._internal.load.records import Record

__all__ = [
    "DEFAULT_RING_BYTES",
    "Copier",
    "CpuCopier",
    "FileCopier",
    "StagingCopier",
    "copier_for",
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
    #: where the result tensors live
    torch_device: Any = "cpu"
    #: the device decrypts: ``acquire`` gives room for the ciphertext record
    decrypts: bool = False
    #: bytes of alignment the planner must give every tensor (0: keep the file layout)
    align: int = 0
    #: ``acquire``'s memory keeps what was written into it, unchanged, until ``finish``
    #: (the final tensors): a streamed digest may hash a plain record from there
    keeps_output: bool = False

    def worker_context(self) -> contextlib.AbstractContextManager[Any]:
        """Entered by each worker thread around all its work (the device to use)."""
        return contextlib.nullcontext()

    def allocate(self, sizes: list[int]) -> None:
        """Allocate one destination buffer per segment (raises DeviceError on OOM)."""
        raise NotImplementedError

    def acquire(self, worker: int, rec: Record, ciphertext: bool = False) -> memoryview:
        """Room for record ``rec``: its plaintext, or (``decrypts``) its ciphertext."""
        raise NotImplementedError

    def commit(self, worker: int, rec: Record, out: memoryview, cipher: Any = None) -> None:
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


class CpuCopier(Copier):
    """Plaintext straight into the final CPU tensors."""

    keeps_output = True

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._backend = get_backend("cpu")
        self._ref = self._backend.resolve(device)
        self._bufs: list[Any] = []
        self._views: list[memoryview] = []
        self._ptrs: list[int] = []

    def allocate(self, sizes: list[int]) -> None:
        for n in sizes:
            try:
                t = self._backend.alloc(self._ref, n)
            except BaseException:
                self.discard()
                raise
            advise_huge_pages(t)
            self._bufs.append(t)
            self._views.append(_np_view(t))
            self._ptrs.append(int(t.data_ptr()))

    def acquire(self, worker: int, rec: Record, ciphertext: bool = False) -> memoryview:
        populate_for_write(self._ptrs[rec.seg] + rec.dst_off, rec.dst_len)
        return self._views[rec.seg][rec.dst_off : rec.dst_off + rec.dst_len]

    def commit(self, worker: int, rec: Record, out: memoryview, cipher: Any = None) -> None:
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


# Host slot layout for device decryption: the counter block (4 uint32) at 0, the
# ciphertext record at _CT; the device scratch mirrors it, so one copy moves both.
_CT = 256


# eq=False: working state, compared by identity (one generated method less to define on
# the loader's import path, issue 25)
@dataclass(eq=False)
class _Slot:
    tensor: Any  # uint8 host tensor (page-locked for CUDA)
    view: memoryview
    event: Any = None  # the device event of the copy reading it, None when idle
    plain: bool = False  # holds plaintext (zeroed when reclaimed); else only ciphertext


class StagingCopier(Copier):
    """Page-locked host ring + async copies into one device allocation per segment."""

    def __init__(
        self,
        backend: DeviceBackend,
        device: str,
        *,
        slot_bytes: int,
        ring_bytes: int,
        workers: int,
        decrypt: bool = False,
    ) -> None:
        import torch

        self._torch = torch
        self._b = backend
        # Resolved ONCE in the caller's thread ("cuda" -> its current device).
        self._ref = backend.resolve(device)
        self.device = str(self._ref)
        self.torch_device = backend.torch_device(self._ref)
        self.align = backend.align
        self.decrypts = decrypt
        slot_bytes = max(1, slot_bytes) + (_CT if decrypt else 0)
        slot_bytes = (slot_bytes + 63) // 64 * 64
        n_slots = max(2, min(ring_bytes // slot_bytes, 2 * max(1, workers) + 2))
        # Allocated with the load's device current (no context on device 0).
        with backend.using(self._ref):
            self._ring = pinned_pool.take(backend, self._ref, n_slots * slot_bytes)
        self.ring_bytes = int(self._ring.numel())
        ring_view = _np_view(self._ring)
        self._slot_bytes = slot_bytes
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
        self._scratch: dict[int, Any] = {}  # worker -> device slot (decryption)
        self._keys: dict[int, Any] = {}  # id(cipher) -> uint32[60] key schedule on device
        self._tables: Any = None
        self._lock = threading.Lock()
        self._ready: Any = None  # event: the device buffers may be written from side streams
        self._closed = False
        self._ring_clean = True
        self._ring_dirty = False  # written since the last wipe (the ring is wiped once)

    def worker_context(self) -> contextlib.AbstractContextManager[Any]:
        return self._b.using(self._ref)

    # -- allocation -----------------------------------------------------------------
    def prepare_keys(self, ciphers: list[Any]) -> None:
        """Key schedules of ``ciphers`` into device memory (before ``allocate``)."""
        from weightguard._internal.devices import aes_ctr_triton as aes

        torch = self._torch
        # Compile and launch the kernel once, in this thread, before any worker exists.
        why = aes.warm_up(None if aes.interpreting() else self._ref.index)
        if why is not None:
            from weightguard.errors import DeviceError

            raise DeviceError(
                f"cannot decrypt on the device: {why}",
                hint="install triton and a C compiler, or pass decrypt_on='cpu'",
            )
        with self._b.using(self._ref):
            if self._tables is None:
                # through the backend: an OOM here is a DeviceError like any other
                tabs = self._b.alloc(self._ref, 4 * 1280)
                host = aes.tables_host().view(torch.uint8)
                self._b.copy_async(tabs, host, self._b.current_stream(self._ref))
                self._b.synchronize(self._ref)
                self._tables = tabs.view(torch.uint32)
            for c in ciphers:
                if id(c) in self._keys:
                    continue
                key, _, _ = c.gcm_record(1)
                words = bytearray(b"".join(w.to_bytes(4, "little") for w in aes.expand_key(key)))
                try:
                    host = torch.frombuffer(words, dtype=torch.uint8)
                    dk = self._b.alloc(self._ref, 240)
                    self._keys[id(c)] = dk
                    self._b.copy_async(dk, host, self._b.current_stream(self._ref))
                    self._b.synchronize(self._ref)  # the host copy is wiped next
                finally:
                    wipe(words)

    def allocate(self, sizes: list[int]) -> None:
        with self._b.using(self._ref):
            cur = self._b.current_stream(self._ref)
            for n in sizes:
                try:
                    t = self._b.alloc(self._ref, n)
                except BaseException:
                    self.discard()
                    raise
                self._bufs.append(t)
                if self.align:
                    self._b.zero_async(t, cur)  # alignment gaps must not show old memory
            if self._b.asynchronous:
                # The caching allocator may hand out blocks whose previous owner still has
                # work queued on the current stream: the worker streams wait for it first.
                self._ready = self._b.event()
                self._ready.record(cur)

    def _stream(self, worker: int) -> Any:
        with self._lock:
            s = self._streams.get(worker)
            if s is None:
                s = self._b.stream(self._ref)
                if self._ready is not None:
                    s.wait_event(self._ready)
                self._streams[worker] = s
        return s

    # -- ring -----------------------------------------------------------------------
    def _take_done(self) -> list[_Slot]:
        """Take the slots whose copy finished out of the pending queue (lock held)."""
        done: list[_Slot] = []
        still: deque[_Slot] = deque()
        while self._pending:
            slot = self._pending.popleft()
            if slot.event is None or slot.event.query():
                slot.event = None
                done.append(slot)
            else:
                still.append(slot)
        self._pending = still
        return done

    def _zero_slot(self, slot: _Slot) -> None:
        """Zero a reclaimed slot that held plaintext (never under the lock)."""
        if slot.plain:
            slot.tensor.zero_()
            slot.plain = False

    def acquire(self, worker: int, rec: Record, ciphertext: bool = False) -> memoryview:
        # Host work (zeroing, waiting on a device event) happens without the lock: the
        # other workers keep taking and committing slots meanwhile.
        slot: _Slot | None = None
        while slot is None:
            with self._cond:
                done = self._take_done()
                if not done:
                    if self._free:
                        slot = self._free.popleft()
                    elif self._pending:
                        slot = self._pending.popleft()  # the oldest copy: waited on below
                    else:
                        self._cond.wait(0.05)  # every slot is being filled by a worker
                        continue
                self._ring_dirty = True
            if done:
                slot = done.pop()
                for d in done:
                    self._zero_slot(d)
                if done:
                    with self._cond:
                        self._free.extend(done)
                        self._cond.notify_all()
        ev, slot.event = slot.event, None
        if ev is not None:
            ev.synchronize()
        self._zero_slot(slot)
        slot.plain = not ciphertext
        view = slot.view[_CT : _CT + rec.src_len] if ciphertext else slot.view[: rec.dst_len]
        with self._cond:
            self._by_view[id(view)] = slot
        return view

    def _pieces(self, rec: Record) -> tuple[tuple[int, int, int], ...]:
        return rec.pieces if self.align else ((0, rec.dst_off, rec.dst_len),)

    def commit(self, worker: int, rec: Record, out: memoryview, cipher: Any = None) -> None:
        with self._cond:
            slot = self._by_view.pop(id(out))
        stream = self._stream(worker)
        seg = self._bufs[rec.seg]
        b = self._b
        if cipher is not None:  # a ciphertext record: decrypted on the device
            src = self._device_decrypt(worker, rec, slot, stream, cipher)
            base = _CT
        else:
            src, base = slot.tensor, 0
        for so, do, ln in self._pieces(rec):
            b.copy_async(seg[do : do + ln], src[base + so : base + so + ln], stream)
        if cipher is not None:
            # plaintext in the scratch slot (and the keystream-XORed tag bytes of its last word)
            b.zero_async(src[: _CT + (rec.dst_len + 3) // 4 * 4], stream)
        ev = b.event()
        ev.record(stream)
        slot.event = ev
        with self._cond:
            self._pending.append(slot)
            self._cond.notify()

    def _device_decrypt(
        self, worker: int, rec: Record, slot: _Slot, stream: Any, cipher: Any
    ) -> Any:
        from weightguard._internal.devices import aes_ctr_triton as aes

        torch = self._torch
        _, nonce, _ = cipher.gcm_record(rec.index)
        j0 = nonce + b"\x00\x00\x00\x01"
        words = [int.from_bytes(j0[i : i + 4], "big") for i in range(0, 16, 4)]
        slot.view[:16] = b"".join(w.to_bytes(4, "little") for w in words)
        with self._lock:
            scratch = self._scratch.get(worker)
            if scratch is None:
                scratch = self._scratch[worker] = self._b.alloc(self._ref, self._slot_bytes)
        n = _CT + rec.src_len
        self._b.copy_async(scratch[:n], slot.tensor[:n], stream)
        ctr = scratch[:16].view(torch.uint32)
        # whole 32-bit words: up to 3 bytes of the tag after the plaintext are clobbered
        data = scratch[_CT : _CT + (rec.dst_len + 3) // 4 * 4]
        rk = self._keys[id(cipher)].view(torch.uint32)
        self._b.launch(stream, aes.ctr_decrypt, data, ctr, rk, self._tables, rec.dst_len)
        return scratch

    def abandon(self, worker: int, out: memoryview) -> None:
        with self._cond:
            slot = self._by_view.pop(id(out), None)
        if slot is not None:
            slot.tensor.zero_()  # whatever it held (a failed record: zeroed at once)
            slot.plain = False
            slot.event = None
            with self._cond:
                self._free.append(slot)
                self._cond.notify()

    # -- end ------------------------------------------------------------------------
    def _drain(self) -> None:
        """Wait for every stream, wipe device secrets, zero the host ring.

        The ring is zeroed in a ``finally``: a device error while waiting must not
        leave plaintext in it (it is then not reused either, see close()).
        """
        try:
            try:
                for s in list(self._streams.values()):
                    s.synchronize()
            finally:
                # Every kernel that read the key schedules has finished (or the device
                # failed, and the wipe is best effort): zero them after the last kernel.
                # (The tables are public; zeroed too, so no device memory of the load
                # keeps anything.)
                if self._keys or self._scratch or self._tables is not None:
                    cur = self._b.current_stream(self._ref)
                    tabs = () if self._tables is None else (self._tables,)
                    for t in (*self._keys.values(), *self._scratch.values(), *tabs):
                        self._b.zero_async(t, cur)
                    self._b.synchronize(self._ref)
                    self._keys.clear()
                    self._scratch.clear()
                    self._tables = None
        except BaseException:
            self._ring_clean = False
            raise
        finally:
            with self._cond:
                for slot in self._slots:
                    slot.event = None
                    slot.plain = False
                self._pending.clear()
                self._free = deque(self._slots)
                dirty, self._ring_dirty = self._ring_dirty, False
            if dirty:  # once per load: close() after finish() has nothing left to wipe
                try:
                    wipe(_np_view(self._ring))
                except BaseException:
                    self._ring_clean = False
                    self._ring_dirty = True
                    raise

    def finish(self) -> list[Any]:
        with self._b.using(self._ref):
            self._drain()
        out, self._bufs = self._bufs, []
        return out

    def discard(self) -> None:
        """Zero and free everything; raises the first device error, after all steps ran."""
        first: BaseException | None = None
        with self._b.using(self._ref):
            try:
                self._drain()
            except BaseException as exc:
                first = exc
            try:
                cur = self._b.current_stream(self._ref)
                for t in self._bufs:
                    self._b.zero_async(t, cur)
                if self._bufs:
                    self._b.synchronize(self._ref)
            except BaseException as exc:
                first = first or exc
            self._bufs = []
            try:
                self._b.empty_cache(self._ref)
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with self._b.using(self._ref):
                self._drain()
        finally:
            self._streams = {}
            # Back to the process-wide pool only when it is known to be zero.
            pinned_pool.give(self._b, self._ref, self._ring, zeroed=self._ring_clean)

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

    def acquire(self, worker: int, rec: Record, ciphertext: bool = False) -> memoryview:
        with self._lock:
            buf = self._bufs.get(worker)
            if buf is None:
                buf = self._bufs[worker] = bytearray(self._slot_bytes)
        return memoryview(buf)[: rec.dst_len]

    def commit(self, worker: int, rec: Record, out: memoryview, cipher: Any = None) -> None:
        n = rec.dst_len
        try:
            pos, done = self._starts[rec.seg] + rec.dst_off, 0
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


def copier_for(
    device: str,
    *,
    slot_bytes: int,
    ring_bytes: int = DEFAULT_RING_BYTES,
    workers: int = 1,
    decrypt: bool = False,
) -> Copier:
    """The copier for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a registered type)."""
    kind = device.split(":", 1)[0]
    if kind == "cpu":
        return CpuCopier(device)
    backend = get_backend(kind)
    return StagingCopier(
        backend,
        device,
        slot_bytes=slot_bytes,
        ring_bytes=ring_bytes,
        workers=workers,
        decrypt=decrypt,
    )
