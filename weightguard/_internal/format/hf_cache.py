"""Local model directories as Hugging Face tools leave them.

The hub cache (``huggingface_hub.snapshot_download`` without ``local_dir``) keeps each
file once under ``<repo>/blobs/`` and presents a revision as
``<repo>/snapshots/<rev>/``, whose files are relative symlinks into ``blobs``.  A
signature check that refuses every symlink would refuse every cached model, and one
that follows any symlink would read whatever a link points at.  So: in a snapshot,
every link must resolve to a regular file inside the same repo's ``blobs/`` (anything
else is refused before a byte is read), and then the links are followed.  The bytes
are still checked against the signature like any other file.

Every level of the cache is checked the same way, by resolved real paths
(:func:`~weightguard._internal.foundation.names.unlinked_below`,
:func:`~weightguard._internal.foundation.names.real_inside`): the repo directory,
``snapshots/``, the revision directory and ``blobs/`` must be real directories, not
symbolic links, or a linked ``blobs/`` (to ``/``, say) would put every target "inside
blobs".  Only the directory holding the repos (``HF_HUB_CACHE``) may itself be a link.
The loader's :class:`~weightguard._internal.load.sources.Location` applies the same
rule to every file it opens, so an unverified load or fetch reads nothing outside the
model directory or the repo's ``blobs/`` either.

``snapshot_download(local_dir=...)`` writes real files plus its own bookkeeping under
``.cache/huggingface/``; the loader never reads that directory, so it may be unsigned.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

from weightguard._internal.foundation.names import real_inside, unlinked_below
from weightguard._internal.signing.location import signature_name
from weightguard.errors import VerificationError

__all__ = ["HF_BOOKKEEPING", "Layout", "local_layout", "snapshot_blobs"]

HF_BOOKKEEPING = ".cache/huggingface"


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Layout(NamedTuple):
    allow_symlinks: bool = False
    allow_unsigned: tuple[str, ...] = ()
    repo: Path | None = None  # the hub-cache repo (models--org--name) when in a snapshot
    blobs: Path | None = None  # the real path of its blobs/ (where links may point)


def _snapshot_repo(path: Path) -> Path | None:
    """The repo directory when ``path`` is ``<repo>/snapshots/<rev>`` (or a file in it)."""
    for d in (path, path.parent):
        if d.parent.name == "snapshots" and os.path.lexists(d.parent.parent / "blobs"):
            return d.parent.parent
    return None


def _check_levels(repo: Path, snap: Path) -> Path:
    """The real path of ``repo/blobs`` once no level of the repo is a symbolic link."""
    cache = repo.parent
    for level, what in (
        (repo, "the repository directory"),
        (repo / "snapshots", "snapshots/"),
        (snap, "the revision directory"),
        (repo / "blobs", "blobs/"),
    ):
        if not unlinked_below(cache, level):
            raise VerificationError(
                f"{level}: {what} of a Hugging Face cache repository is (or goes through) "
                "a symbolic link; refused",
                hint="only the cache directory itself may be a link; the repo, snapshots/, "
                "the revision and blobs/ must be real directories",
            )
    blobs = repo / "blobs"
    if not blobs.is_dir():
        raise VerificationError(f"{blobs}: not a directory; refused")
    return Path(os.path.realpath(blobs))


def snapshot_blobs(path: Path, *, is_dir: bool) -> Path | None:
    """For a path in a hub-cache snapshot, the real ``blobs/`` its links may point
    into (after :func:`_check_levels`); ``None`` for any other path."""
    path = path.absolute()
    repo = _snapshot_repo(path)
    if repo is None:
        return None
    return _check_levels(repo, path if is_dir else path.parent)


def _check_link(link: Path, name: str, blobs: Path) -> None:
    target = real_inside(link, (blobs,))
    if target is None:
        raise VerificationError(
            f"{name} is a symbolic link leaving the Hugging Face cache repository "
            f"(to {os.path.realpath(link)}); refused",
            hint="a snapshot's links must point into the same repo's blobs/ directory",
        )
    try:
        st = os.stat(target)
    except OSError:
        raise VerificationError(f"{name}: broken symbolic link into blobs/") from None
    if not stat.S_ISREG(st.st_mode):
        raise VerificationError(f"{name}: symbolic link to something that is not a file")


def local_layout(path: Path, *, is_dir: bool) -> Layout:
    """How to verify the local model at ``path``; refuses a snapshot link leaving its repo
    and a repo with a linked level."""
    unsigned = (HF_BOOKKEEPING,) if is_dir and (path / HF_BOOKKEEPING).is_dir() else ()
    blobs = snapshot_blobs(path, is_dir=is_dir)
    if blobs is None:
        return Layout(allow_unsigned=unsigned)
    repo = _snapshot_repo(path.absolute())
    if not is_dir:
        if path.is_symlink():
            _check_link(path, path.name, blobs)
        sig = path.parent / signature_name(path.name)
        if sig.is_symlink():
            _check_link(sig, sig.name, blobs)
        return Layout(allow_symlinks=True, allow_unsigned=unsigned, repo=repo, blobs=blobs)
    for root, dirs, files in os.walk(path):  # does not descend into linked directories
        for entry in (*dirs, *files):
            full = Path(root) / entry
            if full.is_symlink():
                rel = full.relative_to(path).as_posix()
                if full.is_dir():
                    raise VerificationError(f"{rel} is a symbolic link to a directory; refused")
                _check_link(full, rel, blobs)
    return Layout(allow_symlinks=True, allow_unsigned=unsigned, repo=repo, blobs=blobs)
