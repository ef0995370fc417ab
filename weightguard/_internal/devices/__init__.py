"""Device backends (the copier's seam to CPU, CUDA, or a test's fake device)."""

from weightguard._internal.devices.base import DeviceBackend, DeviceRef
from weightguard._internal.devices.registry import (
    available_backends,
    get_backend,
    register_backend,
)

__all__ = ["DeviceBackend", "DeviceRef", "available_backends", "get_backend", "register_backend"]
