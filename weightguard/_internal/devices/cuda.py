"""NVIDIA GPUs through ``torch.cuda``.

Rules this backend keeps (each was a bug found in review, see tests/load/test_devices.py):

* ``"cuda"`` is resolved ONCE, in the caller's thread, to ``torch.cuda.current_device()``
  (the torchrun pattern sets it per rank); worker threads then enter
  ``torch.cuda.device(idx)``, so their streams, events and copies are on that GPU and
  leaving a stream context cannot switch a worker to GPU 0.
* Pinned host memory is allocated with the load's device current: page-locking creates
  a CUDA context on the current device, which must not be GPU 0 for a load to cuda:N.
* Only a real out-of-memory is reported as one; an invalid ordinal or another CUDA
  error is a :class:`DeviceError` with its own message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from weightguard._internal.devices.base import DeviceBackend, DeviceRef
from weightguard._internal.devices.cpu import out_of_memory
from weightguard._internal.devices.registry import register_backend
from weightguard.errors import DeviceError

__all__ = ["CudaBackend"]


def _torch() -> Any:
    import torch

    return torch


@register_backend("cuda")
class CudaBackend(DeviceBackend):
    align = 256  # cudaMalloc's own alignment; cuBLASLt fp8 needs >= 16

    def resolve(self, device: str) -> DeviceRef:
        torch = _torch()
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} requested but CUDA is not available",
                hint="install a CUDA build of torch on a GPU machine, or load to cpu",
            )
        _, sep, idx = device.partition(":")
        count = torch.cuda.device_count()
        if not sep:
            return DeviceRef("cuda", int(torch.cuda.current_device()))
        if not idx.isdigit() or int(idx) >= count:
            raise DeviceError(
                f"no CUDA device {device!r}: this process sees {count} GPU(s) "
                f"(cuda:0 to cuda:{count - 1})",
                hint="check CUDA_VISIBLE_DEVICES and the device index",
            )
        return DeviceRef("cuda", int(idx))

    def using(self, ref: DeviceRef) -> contextlib.AbstractContextManager[Any]:
        return _torch().cuda.device(ref.index)

    def torch_device(self, ref: DeviceRef) -> Any:
        return _torch().device("cuda", ref.index)

    def alloc(self, ref: DeviceRef, n: int) -> Any:
        torch = _torch()
        try:
            return torch.empty(n, dtype=torch.uint8, device=self.torch_device(ref))
        except torch.cuda.OutOfMemoryError as exc:
            raise out_of_memory(str(ref), n) from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise out_of_memory(str(ref), n) from exc
            raise DeviceError(
                f"cannot allocate {n} bytes on {ref}: CUDA error "
                f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
                hint="check the GPU with nvidia-smi; the device may be in a bad state",
            ) from exc

    def pinned(self, ref: DeviceRef, n: int) -> Any:
        torch = _torch()
        with self.using(ref):
            try:
                return torch.empty(n, dtype=torch.uint8, pin_memory=True)
            except RuntimeError as exc:
                raise DeviceError(
                    f"cannot page-lock {n} bytes of host memory for the staging ring",
                    hint="pass a smaller ring_bytes= or raise the locked-memory limit",
                ) from exc

    def release_host(self) -> None:
        torch = _torch()
        fn = getattr(torch._C, "_host_emptyCache", None)
        if fn is not None:
            fn()

    def empty_cache(self, ref: DeviceRef) -> None:
        torch = _torch()
        with self.using(ref):
            torch.cuda.empty_cache()

    def stream(self, ref: DeviceRef) -> Any:
        return _torch().cuda.Stream(device=ref.index)

    def current_stream(self, ref: DeviceRef) -> Any:
        return _torch().cuda.current_stream(ref.index)

    def event(self) -> Any:
        return _torch().cuda.Event()

    def synchronize(self, ref: DeviceRef) -> None:
        _torch().cuda.synchronize(ref.index)

    def copy_async(self, dst: Any, src: Any, stream: Any) -> None:
        with _torch().cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def zero_async(self, t: Any, stream: Any) -> None:
        with _torch().cuda.stream(stream):
            t.zero_()

    def launch(self, stream: Any, kernel: Callable[..., None], *args: Any) -> None:
        with _torch().cuda.stream(stream):
            kernel(*args)
