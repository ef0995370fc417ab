"""A fake asynchronous GPU for the device seam (no GPU here; CUDA tests are marked).

It behaves like CUDA where the copier's correctness depends on it:

* work (copies, memsets, kernels) is queued per stream and runs LATE, on a background
  thread per stream, in stream order, after ``delay`` seconds each -- so a slot zeroed
  or reused before its copy ran shows up as wrong bytes, like a DMA reading a page that
  was already overwritten;
* events complete when the stream reaches them; ``wait_event`` orders streams;
* every thread has a current device (0 unless set), which is where streams, pinned
  memory and "current stream" work land when nothing else says.

It records every rule a real GPU would punish: work queued on a stream of another
device than the thread's current one, a copy into memory of another device than the
stream's, and every device a "context" was created on.  ``violations`` must stay empty.
Failures can be injected: ``fail_copy_at`` (the n-th copy raises), ``fail_zero``
(device memsets raise, e.g. to break ``discard()``).

Device memory is plain CPU memory; results are CPU tensors (``torch_device`` is cpu).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from weightguard._internal.devices.base import DeviceBackend, DeviceRef
from weightguard._internal.devices.cpu import out_of_memory
from weightguard._internal.devices.registry import get_backend, register_backend
from weightguard.errors import DeviceError

__all__ = ["FakeBackend", "fake_device"]

_KERNEL_LOCK = threading.Lock()


class FakeEvent:
    def __init__(self) -> None:
        self._done = threading.Event()
        self._recorded = False

    def record(self, stream: FakeStream) -> None:
        self._recorded = True
        self._done.clear()
        stream._enqueue(self._done.set, what="event")

    def query(self) -> bool:
        return not self._recorded or self._done.is_set()

    def synchronize(self) -> None:
        if self._recorded and not self._done.wait(30):
            raise AssertionError("fake event never completed")


class FakeStream:
    def __init__(self, backend: FakeBackend, device: int) -> None:
        self.device = device
        self._b = backend
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._t = threading.Thread(target=self._run, daemon=True, name=f"fake-stream-{device}")
        self._t.start()

    def _run(self) -> None:
        while True:
            fn = self._q.get()
            if fn is None:
                return
            if self._b.delay:
                time.sleep(self._b.delay)
            try:
                fn()
            except BaseException as exc:  # an asynchronous device error
                self._b.async_errors.append(exc)

    def _enqueue(self, fn: Callable[[], None], *, what: str) -> None:
        self._q.put(fn)

    def wait_event(self, ev: FakeEvent) -> None:
        self._enqueue(ev.synchronize, what="wait")

    def synchronize(self) -> None:
        ev = FakeEvent()
        ev.record(self)
        ev.synchronize()

    def stop(self) -> None:
        self._q.put(None)


@register_backend("fake")
class FakeBackend(DeviceBackend):
    align = 256

    def __init__(self) -> None:
        self.reset()

    def reset(self, *, devices: int = 2, delay: float = 0.002, capacity: int = 1 << 40) -> None:
        for s in getattr(self, "_all_streams", []):
            s.stop()
        self.devices = devices
        self.delay = delay
        self.capacity = capacity
        self.violations: list[str] = []
        self.contexts: set[int] = set()
        self.async_errors: list[BaseException] = []
        self.allocations: list[tuple[int, torch.Tensor]] = []  # (device, tensor): kept
        self.fail_copy_at: int | None = None
        self.fail_zero = False
        self._copies = 0
        self._used = [0] * devices
        # released allocations, drained under _lock (see _release); a new queue per reset,
        # so a finalizer of an earlier test's allocation never counts against this one
        self._freed: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._owner: dict[int, int] = {}  # storage data_ptr -> device
        self._local = threading.local()
        self._lock = threading.Lock()
        self._default: dict[int, FakeStream] = {}
        self._all_streams: list[FakeStream] = []

    # -- devices and threads -----------------------------------------------------------
    def current(self) -> int:
        return getattr(self._local, "device", 0)

    def set_device(self, idx: int) -> None:
        """torch.cuda.set_device for the calling thread."""
        self._local.device = idx

    def resolve(self, device: str) -> DeviceRef:
        _, sep, idx = device.partition(":")
        if not sep:
            return DeviceRef("fake", self.current())
        if not idx.isdigit() or int(idx) >= self.devices:
            raise DeviceError(f"no fake device {device!r}: {self.devices} visible")
        return DeviceRef("fake", int(idx))

    @contextlib.contextmanager
    def _using(self, idx: int) -> Iterator[None]:
        prev = self.current()
        self._local.device = idx
        try:
            yield
        finally:
            self._local.device = prev

    def using(self, ref: DeviceRef) -> contextlib.AbstractContextManager[Any]:
        return self._using(ref.index)

    def torch_device(self, ref: DeviceRef) -> Any:
        return torch.device("cpu")

    # -- memory ------------------------------------------------------------------------
    @staticmethod
    def _release(freed: queue.SimpleQueue[tuple[int, int]], idx: int, n: int) -> None:
        # A GC finalizer: it runs in whatever thread the collection happens in, possibly
        # one holding _lock, or one whose start another thread holding _lock waits for
        # (CI hung so: current_stream starting a stream thread whose first allocation
        # collected a buffer). So it takes no lock; SimpleQueue.put is reentrant-safe.
        freed.put((idx, n))

    def _drain(self) -> None:
        """Count released allocations; called with _lock held."""
        while True:
            try:
                idx, n = self._freed.get_nowait()
            except queue.Empty:
                return
            self._used[idx] -= n

    def alloc(self, ref: DeviceRef, n: int) -> Any:
        with self._lock:
            self._drain()
            if self._used[ref.index] + n > self.capacity:
                raise out_of_memory(str(ref), n)
            self._used[ref.index] += n
        self.contexts.add(ref.index)
        # 256-byte aligned like cudaMalloc; filled with "old data" that must never show
        raw = torch.empty(n + 256, dtype=torch.uint8).fill_(0xA5)
        skip = -raw.data_ptr() % 256
        t = raw[skip : skip + n]
        self._owner[t.untyped_storage().data_ptr()] = ref.index
        weakref.finalize(t.untyped_storage(), self._release, self._freed, ref.index, n)
        self.allocations.append((ref.index, t))
        return t

    def pinned(self, ref: DeviceRef, n: int) -> Any:
        self.contexts.add(self.current())  # page-locking creates a context on the current
        return torch.empty(n, dtype=torch.uint8)

    def used(self, idx: int = 0) -> int:
        with self._lock:
            self._drain()
            return self._used[idx]

    # -- ordering ----------------------------------------------------------------------
    def stream(self, ref: DeviceRef) -> Any:
        self.contexts.add(ref.index)
        s = FakeStream(self, ref.index)
        self._all_streams.append(s)
        return s

    def current_stream(self, ref: DeviceRef) -> Any:
        self.contexts.add(ref.index)
        with self._lock:
            s = self._default.get(ref.index)
            if s is None:
                s = self._default[ref.index] = FakeStream(self, ref.index)
                self._all_streams.append(s)
        return s

    def event(self) -> Any:
        return FakeEvent()

    def synchronize(self, ref: DeviceRef) -> None:
        for s in list(self._all_streams):
            if s.device == ref.index:
                s.synchronize()

    # -- work --------------------------------------------------------------------------
    def _check(self, what: str, stream: FakeStream, *tensors: Any) -> None:
        cur = self.current()
        if cur != stream.device:
            self.contexts.add(cur)
            self.violations.append(
                f"{what} on a stream of fake:{stream.device} from a thread on fake:{cur}"
            )
        for t in tensors:
            owner = self._owner.get(t.untyped_storage().data_ptr())
            if owner is not None and owner != stream.device:
                self.violations.append(
                    f"{what} touches fake:{owner} memory on a fake:{stream.device} stream"
                )

    def copy_async(self, dst: Any, src: Any, stream: Any) -> None:
        self._check("copy", stream, dst)
        with self._lock:
            self._copies += 1
            n = self._copies
        if self.fail_copy_at is not None and n >= self.fail_copy_at:
            raise DeviceError("fake device: copy failed (injected)")
        stream._enqueue(lambda: dst.copy_(src), what="copy")

    def zero_async(self, t: Any, stream: Any) -> None:
        self._check("memset", stream, t)
        if self.fail_zero:
            raise DeviceError("fake device: memset failed (injected)")
        stream._enqueue(t.zero_, what="memset")

    def launch(self, stream: Any, kernel: Callable[..., None], *args: Any) -> None:
        self._check("kernel", stream, *(a for a in args if isinstance(a, torch.Tensor)))

        def run() -> None:
            with _KERNEL_LOCK:  # Triton's interpreter keeps global state: one at a time
                kernel(*args)

        stream._enqueue(run, what="kernel")


def fake_device() -> FakeBackend:
    """The registered fake backend (``device="fake"`` / ``"fake:N"``)."""
    b = get_backend("fake")
    assert isinstance(b, FakeBackend)
    return b
