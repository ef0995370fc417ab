"""The one check for relative names that come from outside (bundles, indexes, listings).

A model is a tree of files whose names arrive from places an attacker may write: an S3
listing, ``model.safetensors.index.json``, a directory walk, a signature bundle.  Any
of them may end up joined to an output directory, so every such name goes through
:func:`safe_relative_name` before it is used as a path: a plain relative POSIX path
whose every component is a normal file name.  The rules are deliberately stricter
than any file system needs, so that a name means the same thing on every one.
"""

from __future__ import annotations

import re
from pathlib import Path

from weightguard.errors import FormatError

__all__ = ["MAX_NAME_LEN", "safe_join", "safe_relative_name"]

MAX_NAME_LEN = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_relative_name(name: object, where: str) -> str:
    """``name`` if it is a safe relative path inside a model, else :class:`FormatError`.

    Refused: non-strings, empty names, absolute paths (``/x``, ``C:x``), backslashes,
    NUL and other control characters (C0, DEL, C1), and empty, ``.`` or ``..``
    components.  ``where`` names the origin (e.g. the listing) in the message.
    """
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: a file name must be a non-empty string")
    shown = repr(name[:200])
    if len(name) > MAX_NAME_LEN:
        raise FormatError(f"{where}: file name {shown} is longer than {MAX_NAME_LEN} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise FormatError(f"{where}: file name {shown} contains control characters")
    if "\\" in name:
        raise FormatError(f"{where}: file name {shown} contains a backslash")
    if name.startswith("/") or _DRIVE.match(name):
        raise FormatError(f"{where}: file name {shown} is an absolute path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise FormatError(f"{where}: file name {shown} has an empty, '.' or '..' component")
    return name


def safe_join(root: Path, name: str, where: str) -> Path:
    """``root / name`` after :func:`safe_relative_name`."""
    return root.joinpath(*safe_relative_name(name, where).split("/"))
