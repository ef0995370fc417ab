"""The one check for relative names that come from outside (bundles, indexes, listings).

A model is a tree of files whose names arrive from places an attacker may write: an S3
listing, ``model.safetensors.index.json``, a directory walk, a signature bundle.  Any
of them may end up joined to an output directory, so every such name goes through
:func:`safe_relative_name` before it is used as a path: a plain relative POSIX path
whose every component is a normal file name.  The rules are deliberately stricter
than any file system needs, so that a name means the same thing on every one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from weightguard.errors import FormatError

__all__ = ["MAX_NAME_LEN", "real_inside", "safe_join", "safe_relative_name", "unlinked_below"]

MAX_NAME_LEN = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1


def safe_relative_name(name: object, where: str) -> str:
    """``name`` if it is a safe relative path inside a model, else :class:`FormatError`.

    Refused: non-strings, empty names, absolute paths (``/x``; on Windows also
    ``C:x``), backslashes, NUL and other control characters (C0, DEL, C1), and empty,
    ``.`` or ``..`` components.  ``where`` names the origin (e.g. the listing) in the
    message.  On POSIX ``:`` is an ordinary character (``a:b.txt``, as model_signing
    signs it): only Windows reads a leading ``X:`` as a drive.
    """
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: a file name must be a non-empty string")
    shown = repr(name[:200])
    if len(name) > MAX_NAME_LEN:
        raise FormatError(f"{where}: file name {shown} is longer than {MAX_NAME_LEN} characters")
    if _CONTROL.search(name):
        raise FormatError(f"{where}: file name {shown} contains control characters")
    if "\\" in name:
        raise FormatError(f"{where}: file name {shown} contains a backslash")
    if name.startswith("/") or (os.name == "nt" and _DRIVE.match(name)):
        raise FormatError(f"{where}: file name {shown} is an absolute path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise FormatError(f"{where}: file name {shown} has an empty, '.' or '..' component")
    return name


def safe_join(root: Path, name: str, where: str) -> Path:
    """``root / name`` after :func:`safe_relative_name`."""
    return root.joinpath(*safe_relative_name(name, where).split("/"))


# Containment: the one rule for "is this path really inside that directory".  Names are
# checked textually above; a path built from a safe name can still leave its directory
# through a symbolic link at any level (a linked file, a linked parent directory, a
# linked root such as a Hugging Face cache's ``blobs/``).  Both functions compare the
# kernel's resolved real paths, never the text of the path.


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(path)


def real_inside(
    path: str | os.PathLike[str], roots: tuple[str | os.PathLike[str], ...]
) -> Path | None:
    """The real path of ``path`` if it lies in (or is) one of ``roots`` (each resolved
    too), else ``None``.  Every symbolic link on the way is followed before comparing."""
    target = _real(path)
    for root in roots:
        base = _real(root)
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return Path(target)
    return None


def unlinked_below(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` reaches the same real place as ``root`` joined with the rest of
    ``path``: no component of ``path`` below ``root`` is a symbolic link (``..``
    components never count as staying below).  ``root`` itself may be a link."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == ".":
        return True
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        return False
    return _real(path) == os.path.join(_real(root), rel)
