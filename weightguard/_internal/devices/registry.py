"""Device backends by name (``"cpu"``, ``"cuda"``, a test's fake device).

Like fastsafetensors' copier registry: each backend module registers itself with a
decorator; the loader asks for the backend of a device string's type.  An unknown
name is a :class:`DeviceError` that lists what is available.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from weightguard._internal.devices.base import DeviceBackend
from weightguard.errors import DeviceError

__all__ = ["available_backends", "get_backend", "register_backend"]

_REGISTRY: dict[str, DeviceBackend] = {}
# Built-in backends import lazily: `cuda` must not touch torch.cuda until asked for.
_BUILTIN = {
    "cpu": "weightguard._internal.devices.cpu",
    "cuda": "weightguard._internal.devices.cuda",
}
B = TypeVar("B", bound=type[DeviceBackend])


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: instantiate the backend and register it under ``name``."""

    def deco(cls: B) -> B:
        backend = cls()
        backend.name = name
        _REGISTRY[name] = backend
        return cls

    return deco


def available_backends() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_backend(name: str) -> DeviceBackend:
    """The backend registered as ``name`` (the type part of ``"cuda:1"``)."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    backend = _REGISTRY.get(name)
    if backend is None:
        raise DeviceError(
            f"cannot load to device type {name!r}",
            hint=f"use one of: {', '.join(repr(n) + '[:N]' for n in available_backends())}",
        )
    return backend
