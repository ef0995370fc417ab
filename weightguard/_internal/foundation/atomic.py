"""Atomic output: write to a temporary file in the destination directory, fsync, rename.

Nothing is ever left half-written under the final name: on any error (including
ENOSPC while writing or at fsync) the temporary file is removed and the final path is
untouched.  Disk-full and permission problems become :class:`DestinationError`.

    with atomic_write("out/model.safetensors", mode=0o600, preallocate=size) as f:
        f.write(...)            # or os.pwrite(f.fileno(), ...)

    with atomic_directory("out/model") as tmpdir:
        ...                     # fill tmpdir; renamed to out/model on success
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from weightguard.errors import DestinationError

__all__ = [
    "atomic_directory",
    "atomic_write",
    "atomic_write_bytes",
    "destination_error",
    "fsync_dir",
]

# Errors raised while *writing* that always mean "the destination cannot take this".
_DEST_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the destination file system",
    errno.EROFS: "the destination file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "the destination directory does not exist",
    errno.ENOTDIR: "a component of the destination path is not a directory",
    errno.EIO: "I/O error on the destination device",
}
# Errors from code run inside the ``with`` body (e.g. reads of a source) that are only
# destination problems for sure when they are of these kinds.
_BODY_DEST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def destination_error(exc: OSError, path: str | os.PathLike[str]) -> DestinationError:
    """A :class:`DestinationError` describing ``exc`` for output ``path``."""
    what = _DEST_ERRNOS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return DestinationError(f"cannot write {os.fspath(path)}: {what}; nothing was written")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename in it is durable (best effort on odd file systems)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _umask_mode(mode: int) -> int:
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    *,
    mode: int = 0o644,
    preallocate: int | None = None,
    overwrite: bool = True,
) -> Iterator[BinaryIO]:
    """Yield a binary file (``w+b``) that becomes ``path`` only if the block succeeds.

    ``mode`` is applied (minus the umask) before the rename; use ``0o600`` for
    plaintext or secrets.  ``preallocate`` reserves the final size up front with
    ``posix_fallocate`` so a full disk is detected before any work is done (the
    caller must then write exactly that many bytes).
    ``overwrite=False`` refuses an existing destination.
    """
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not overwrite and dest.exists():
        raise DestinationError(
            f"{dest} already exists", hint="remove it or choose another output path"
        )
    if dest.is_dir():
        raise DestinationError(f"{dest} is a directory", hint="give a file path as the output")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".wgtmp", dir=parent)
    except OSError as exc:
        raise destination_error(exc, dest) from None
    tmp = Path(tmp_name)
    f = os.fdopen(fd, "w+b")
    done = False
    try:
        try:
            if preallocate:
                try:
                    os.posix_fallocate(fd, 0, preallocate)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
        except OSError as exc:
            raise destination_error(exc, dest) from None
        try:
            yield f
        except OSError as exc:
            if exc.errno in _BODY_DEST_ERRNOS:
                raise destination_error(exc, dest) from None
            raise
        try:
            f.flush()
            os.fsync(fd)
            os.fchmod(fd, _umask_mode(mode))
            f.close()
            os.replace(tmp, dest)
        except OSError as exc:
            raise destination_error(exc, dest) from None
        done = True
        fsync_dir(parent)
    finally:
        if not done:
            with contextlib.suppress(OSError):
                f.close()
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, mode=mode) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``path``; renamed to ``path`` on success.

    ``path`` must not exist, or be an empty directory.  On failure the temporary
    directory and everything in it is removed.
    """
    dest = Path(path)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DestinationError(
            f"{dest} already exists and is not an empty directory",
            hint="remove it or choose another output directory",
        )
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".wgtmp", dir=parent))
    except OSError as exc:
        raise destination_error(exc, dest) from None
    done = False
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in _BODY_DEST_ERRNOS:
                raise destination_error(exc, dest) from None
            raise
        try:
            for root, _dirs, files in os.walk(tmp):
                for name in files:
                    fd = os.open(os.path.join(root, name), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                fsync_dir(root)
            os.chmod(tmp, _umask_mode(0o755))
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except OSError as exc:
            raise destination_error(exc, dest) from None
        done = True
        fsync_dir(parent)
    finally:
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
