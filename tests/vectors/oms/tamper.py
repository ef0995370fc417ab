"""Tampered copies of an interop vector's model (stdlib only: also run by the
generator under each released model_signing's own Python).

Each function changes a copy of the model in place; ``TAMPERS`` names them.  A
single-file model can only be modified.
"""

from __future__ import annotations

import os
from pathlib import Path


def _files(model: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(model):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".git"))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".git")]
    return out


def _victim(model: Path) -> Path:
    """The largest non-empty file (ties: by name), the one every tamper changes."""
    files = [p for p in _files(model) if p.stat().st_size > 0]
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


def added(model: Path) -> None:
    (model / "added.txt").write_bytes(b"not signed\n")


def removed(model: Path) -> None:
    _victim(model).unlink()


def renamed(model: Path) -> None:
    v = _victim(model)
    v.rename(v.with_name("renamed-" + v.name))


def modified(model: Path) -> None:
    v = model if model.is_file() else _victim(model)
    data = bytearray(v.read_bytes())
    data[len(data) // 2 + 1] ^= 0x01
    v.write_bytes(bytes(data))


TAMPERS = {"added": added, "removed": removed, "renamed": renamed, "modified": modified}
SINGLE_FILE_TAMPERS = ("modified",)
