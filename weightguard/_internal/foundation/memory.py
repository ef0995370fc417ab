"""Best-effort wiping of secret or plaintext buffers.

Python cannot guarantee that no copy of a secret survives (immutable ``bytes`` made by
libraries, the allocator), so weightguard keeps keys and plaintext staging data in
mutable buffers it owns and zeroes them as soon as they are no longer needed.
"""

from __future__ import annotations

import ctypes

__all__ = ["wipe"]


def wipe(buf: bytearray | memoryview | None) -> None:
    """Overwrite every byte of a writable buffer with zeros, in place.

    Accepts a ``bytearray`` or a writable ``memoryview`` of any format/shape (a
    numpy array or pinned host tensor's memoryview too). ``None`` and empty buffers
    are ignored; read-only buffers raise ``TypeError`` (they cannot be wiped).
    """
    if buf is None:
        return
    view = memoryview(buf)
    try:
        if view.readonly:
            raise TypeError("cannot wipe a read-only buffer")
        if view.nbytes == 0:
            return
        flat = view if view.c_contiguous and view.format == "B" and view.ndim == 1 else None
        if flat is None:
            if not view.c_contiguous:
                raise TypeError("cannot wipe a non-contiguous buffer")
            flat = view.cast("B")
        try:
            holder = (ctypes.c_char * flat.nbytes).from_buffer(flat)
            ctypes.memset(ctypes.addressof(holder), 0, flat.nbytes)
            del holder
        finally:
            if flat is not view:
                flat.release()
    finally:
        view.release()
