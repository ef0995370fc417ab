"""The device seam: everything the copier asks of a device, in one small interface.

The staging copier (:mod:`weightguard._internal.load.copiers`) never calls ``torch.cuda``
itself; it calls a :class:`DeviceBackend`.  That keeps the ordering rules (slot reused
only after its copy's event, work on the load's device only) testable on a CPU with a
fake asynchronous device (``tests/support/fake_device.py``) that runs copies late.

Method names and semantics follow ``torch.cuda``: streams and events are objects with
``wait_event``/``synchronize`` and ``record``/``query``/``synchronize``; work is ordered
per stream; each thread has a current device, which decides where a stream, event or
allocation without an explicit device lands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DeviceBackend", "DeviceRef"]


@dataclass(frozen=True)
class DeviceRef:
    """A device resolved once: backend name and a concrete index (never "current")."""

    kind: str
    index: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


class DeviceBackend:
    """One kind of device.  Subclasses register with ``@register_backend(name)``."""

    name: str = ""
    #: byte alignment of every tensor inside a device buffer
    align: int = 256
    #: whether the host cannot write the device's memory directly (needs a staging ring)
    asynchronous: bool = True

    # -- devices and threads --------------------------------------------------------------
    def resolve(self, device: str) -> DeviceRef:
        """``"cuda"`` -> the calling thread's current device, ``"cuda:N"`` -> N (checked)."""
        raise NotImplementedError

    def using(self, ref: DeviceRef) -> contextlib.AbstractContextManager[Any]:
        """Make ``ref`` the calling thread's current device for the block."""
        return contextlib.nullcontext()

    def torch_device(self, ref: DeviceRef) -> Any:
        """Where the result tensors live (a ``torch.device``)."""
        raise NotImplementedError

    # -- memory ---------------------------------------------------------------------------
    def alloc(self, ref: DeviceRef, n: int) -> Any:
        """``n`` bytes (uint8 tensor) on ``ref``; DeviceError saying OOM only when it is."""
        raise NotImplementedError

    def pinned(self, ref: DeviceRef, n: int) -> Any:
        """A host uint8 tensor of ``n`` bytes the device can DMA from."""
        raise NotImplementedError

    def release_host(self) -> None:
        """Give cached page-locked host memory back to the OS."""
        return None

    def empty_cache(self, ref: DeviceRef) -> None:
        return None

    # -- ordering -------------------------------------------------------------------------
    def stream(self, ref: DeviceRef) -> Any:
        raise NotImplementedError

    def current_stream(self, ref: DeviceRef) -> Any:
        raise NotImplementedError

    def event(self) -> Any:
        raise NotImplementedError

    def synchronize(self, ref: DeviceRef) -> None:
        raise NotImplementedError

    # -- work on a stream (returns at once; runs in stream order) -------------------------
    def copy_async(self, dst: Any, src: Any, stream: Any) -> None:
        raise NotImplementedError

    def zero_async(self, t: Any, stream: Any) -> None:
        raise NotImplementedError

    def launch(self, stream: Any, kernel: Callable[..., None], *args: Any) -> None:
        """Run ``kernel(*args)`` on ``stream`` (a Triton launch, enqueued in order)."""
        raise NotImplementedError
