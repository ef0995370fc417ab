"""The host as a device: synchronous, no staging needed (``device="cpu"``).

Used by the CPU copier for its allocations, and by tests that run the staging ring
synchronously.  Tensors in its buffers are 64-byte aligned (a cache line, AVX-512).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weightguard._internal.devices.base import DeviceBackend, DeviceRef
from weightguard._internal.devices.registry import register_backend
from weightguard.errors import DeviceError

__all__ = ["CpuBackend", "out_of_memory"]


def out_of_memory(device: str, n: int) -> DeviceError:
    return DeviceError(
        f"out of memory on {device} allocating {n} bytes for the model",
        hint="free device memory, load fewer tensors (open_model(...).load(names)) "
        "or load to another device",
    )


class _Done:
    """A stream/event that is always complete (synchronous work)."""

    def record(self, stream: Any = None) -> None:
        return None

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None


@register_backend("cpu")
class CpuBackend(DeviceBackend):
    align = 64
    asynchronous = False

    def resolve(self, device: str) -> DeviceRef:
        kind, _, idx = device.partition(":")
        if idx not in ("", "0"):
            raise DeviceError(f"no device {device!r}: the CPU is device 'cpu'")
        return DeviceRef(kind, 0)

    def torch_device(self, ref: DeviceRef) -> Any:
        import torch

        return torch.device("cpu")

    def alloc(self, ref: DeviceRef, n: int) -> Any:
        import torch

        try:
            return torch.empty(n, dtype=torch.uint8)
        except (RuntimeError, MemoryError) as exc:
            raise out_of_memory("cpu", n) from exc

    def pinned(self, ref: DeviceRef, n: int) -> Any:
        return self.alloc(ref, n)

    def stream(self, ref: DeviceRef) -> Any:
        return _Done()

    def current_stream(self, ref: DeviceRef) -> Any:
        return _Done()

    def event(self) -> Any:
        return _Done()

    def synchronize(self, ref: DeviceRef) -> None:
        return None

    def copy_async(self, dst: Any, src: Any, stream: Any) -> None:
        dst.copy_(src)

    def zero_async(self, t: Any, stream: Any) -> None:
        t.zero_()

    def launch(self, stream: Any, kernel: Callable[..., None], *args: Any) -> None:
        kernel(*args)
