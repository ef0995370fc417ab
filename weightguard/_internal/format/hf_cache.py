"""Local model directories as Hugging Face tools leave them.

The hub cache (``huggingface_hub.snapshot_download`` without ``local_dir``) keeps each
file once under ``<repo>/blobs/`` and presents a revision as
``<repo>/snapshots/<rev>/``, whose files are relative symlinks into ``blobs``.  A
signature check that refuses every symlink would refuse every cached model, and one
that follows any symlink would read whatever a link points at.  So: in a snapshot,
every link must resolve to a regular file inside the same repo's ``blobs/`` (anything
else is refused before a byte is read), and then the links are followed.  The bytes
are still checked against the signature like any other file.

``snapshot_download(local_dir=...)`` writes real files plus its own bookkeeping under
``.cache/huggingface/``; the loader never reads that directory, so it may be unsigned.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from weightguard.errors import VerificationError

__all__ = ["HF_BOOKKEEPING", "Layout", "local_layout"]

HF_BOOKKEEPING = ".cache/huggingface"


@dataclass(frozen=True)
class Layout:
    allow_symlinks: bool = False
    allow_unsigned: tuple[str, ...] = ()
    repo: Path | None = None  # the hub-cache repo (models--org--name) when in a snapshot


def _snapshot_repo(path: Path) -> Path | None:
    """The repo directory when ``path`` is ``<repo>/snapshots/<rev>`` (or a file in it)."""
    for d in (path, path.parent):
        if d.parent.name == "snapshots" and (d.parent.parent / "blobs").is_dir():
            return d.parent.parent
    return None


def _check_link(link: Path, name: str, blobs: Path) -> None:
    target = Path(os.path.realpath(link))
    try:
        inside = os.path.commonpath([target, blobs]) == str(blobs)
    except ValueError:
        inside = False
    if not inside:
        raise VerificationError(
            f"{name} is a symbolic link leaving the Hugging Face cache repository "
            f"(to {target}); refused",
            hint="a snapshot's links must point into the same repo's blobs/ directory",
        )
    try:
        st = os.stat(target)
    except OSError:
        raise VerificationError(f"{name}: broken symbolic link into blobs/") from None
    if not stat.S_ISREG(st.st_mode):
        raise VerificationError(f"{name}: symbolic link to something that is not a file")


def local_layout(path: Path, *, is_dir: bool) -> Layout:
    """How to verify the local model at ``path``; refuses a snapshot link leaving its repo."""
    unsigned = (HF_BOOKKEEPING,) if is_dir and (path / HF_BOOKKEEPING).is_dir() else ()
    repo = _snapshot_repo(path.absolute())
    if repo is None:
        return Layout(allow_unsigned=unsigned)
    blobs = Path(os.path.realpath(repo / "blobs"))
    if not is_dir:
        if path.is_symlink():
            _check_link(path, path.name, blobs)
        sig = path.parent / f"{path.name}.sig"
        if sig.is_symlink():
            _check_link(sig, sig.name, blobs)
        return Layout(allow_symlinks=True, allow_unsigned=unsigned, repo=repo)
    for root, dirs, files in os.walk(path):  # does not descend into linked directories
        for entry in (*dirs, *files):
            full = Path(root) / entry
            if full.is_symlink():
                rel = full.relative_to(path).as_posix()
                if full.is_dir():
                    raise VerificationError(f"{rel} is a symbolic link to a directory; refused")
                _check_link(full, rel, blobs)
    return Layout(allow_symlinks=True, allow_unsigned=unsigned, repo=repo)
