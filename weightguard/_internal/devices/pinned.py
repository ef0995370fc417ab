"""Page-locked staging rings, kept for the process's life (and how to give them back).

PyTorch's pinned-memory allocator rounds every request up to a power of two and keeps
freed blocks cached until the process exits, so a 256 MiB ring really holds 256 MiB of
locked memory, and a 300 MiB one 512 MiB, after the load returned.  weightguard makes
that explicit instead of pretending to free it: rings are sized to a power of two here,
reused by later loads to the same device, zeroed before they are put back, and
:func:`release_pinned_memory` zeroes and unlocks all of them
(``weightguard.loader.release_pinned_memory``).
"""

from __future__ import annotations

import threading
from typing import Any

from weightguard._internal.devices.base import DeviceBackend, DeviceRef

__all__ = ["give", "pinned_bytes", "release_pinned_memory", "ring_size", "take"]

_lock = threading.Lock()
_free: dict[tuple[str, int], list[Any]] = {}
_backends: dict[str, DeviceBackend] = {}


def ring_size(n: int) -> int:
    """What a ring of ``n`` bytes really occupies: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


def take(backend: DeviceBackend, ref: DeviceRef, n: int) -> Any:
    """A zeroed page-locked block of at least ``ring_size(n)`` bytes (a cached one if any)."""
    size = ring_size(n)
    key = (backend.name, ref.index)
    with _lock:
        blocks = _free.get(key, [])
        fits = [i for i, t in enumerate(blocks) if t.numel() >= size]
        if fits:  # the smallest cached block that is large enough
            return blocks.pop(min(fits, key=lambda i: int(blocks[i].numel())))
    t = backend.pinned(ref, size)
    t.zero_()
    with _lock:
        _backends[backend.name] = backend
    return t


def give(backend: DeviceBackend, ref: DeviceRef, t: Any, *, zeroed: bool) -> None:
    """Return a block for reuse, only if it is known to be zero (else it is dropped)."""
    if not zeroed:
        return
    with _lock:
        _free.setdefault((backend.name, ref.index), []).append(t)


def pinned_bytes() -> int:
    """Locked host memory held for reuse by finished loads."""
    with _lock:
        return sum(int(t.numel()) for blocks in _free.values() for t in blocks)


def release_pinned_memory() -> int:
    """Zero and drop every cached ring and unlock the memory; returns the bytes released."""
    with _lock:
        blocks = [t for bs in _free.values() for t in bs]
        backends = list(_backends.values())
        _free.clear()
    total = 0
    for t in blocks:
        t.zero_()
        total += int(t.numel())
    del blocks
    for b in backends:
        b.release_host()
    return total
