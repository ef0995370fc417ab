"""Base64 as signed material needs it: one canonical encoding per byte string.

``base64.b64decode(validate=True)`` refuses characters outside the alphabet but still
accepts non-zero padding bits: the last character before ``=`` can take up to 16 values
that decode to the same bytes.  A signature, payload or certificate written any of
those ways would verify, so a bundle's (or audit line's) bytes could change while it
stays valid.  Only the encoding ``base64.b64encode`` produces is accepted.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["canonical_b64decode"]


def canonical_b64decode(text: str) -> bytes:
    """Decode standard, padded base64; ``ValueError`` unless ``text`` is canonical."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("non-canonical base64 (padding bits set, or not padded)")
    return data
