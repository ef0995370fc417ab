"""Atomic output: write to an unnamed file in the destination directory, fsync, link.

Nothing is ever left half-written under the final name: on any error (including
ENOSPC while writing or at fsync) the temporary file is removed and the final path is
untouched.  Disk-full and permission problems become :class:`DestinationError`.

Crashes (SIGKILL, power loss) cannot run cleanup code, so the file being written has
no name at all where the kernel allows it: ``O_TMPFILE`` in the destination
directory, linked into place (``linkat`` through ``/proc/self/fd``) only once it is
complete and fsynced; a killed writer leaves nothing behind.  Where ``O_TMPFILE`` is
not supported (some file systems, no ``/proc``) the temporary file is named
``.<name>.<pid>.<random>.wgtmp``, and the next write next to the same destination
removes such files whose process is gone (:func:`clean_stale`).

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
    "PendingFile",
    "atomic_directory",
    "atomic_write",
    "atomic_write_bytes",
    "clean_stale",
    "destination_error",
    "fsync_dir",
]

# Tests turn this off to exercise the named-temp fallback on file systems that have it.
USE_O_TMPFILE = hasattr(os, "O_TMPFILE")

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


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


_LINKABLE: dict[int, bool] = {}  # st_dev -> whether O_TMPFILE + linkat works there


def _link_fd(fd: int, dest: Path) -> None:
    """linkat(/proc/self/fd/N, dest, AT_SYMLINK_FOLLOW): name an O_TMPFILE file.

    CPython calls plain link(2) -- which does not follow the /proc magic link -- unless
    a directory fd is passed, so one is (the absolute source path ignores it).
    """
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", dest, src_dir_fd=root, follow_symlinks=True)
    finally:
        os.close(root)


def _open_unnamed(parent: Path) -> int:
    """An O_TMPFILE descriptor in ``parent`` that can be linked later, or -1.

    Some kernels and sandboxes accept O_TMPFILE but refuse the link (EXDEV, EPERM),
    so each file system is probed once with a throwaway file.
    """
    if not USE_O_TMPFILE or not os.path.isdir("/proc/self/fd"):
        return -1
    try:
        dev = os.stat(parent).st_dev
    except OSError:
        return -1
    ok = _LINKABLE.get(dev)
    if ok is False:
        return -1
    try:
        fd = os.open(parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS):
            raise  # e.g. EACCES: the destination's problem, reported as such
        _LINKABLE[dev] = False
        return -1
    if ok is None:
        probe = parent / f".wgprobe.{os.getpid()}.{os.urandom(6).hex()}"
        try:
            _link_fd(fd, probe)
        except OSError:
            _LINKABLE[dev] = False
            os.close(fd)
            return -1
        with contextlib.suppress(OSError):
            probe.unlink()
        os.close(fd)  # the probe file had a name for an instant: use a fresh one
        _LINKABLE[dev] = True
        return _open_unnamed(parent)
    return fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale(parent: Path, name: str) -> list[Path]:
    """Remove ``.<name>.<pid>.<random>.wgtmp`` leftovers of dead writers in ``parent``.

    Only entries whose writer process no longer exists are removed, so a concurrent
    writer's temporary file is left alone.  Returns what was removed.
    """
    removed: list[Path] = []
    head = f".{name}."
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(head) and e.name.endswith(".wgtmp")):
            continue
        # exactly "<pid>.<random>": a longer rest belongs to another destination
        # (".a.<pid>..." must not be taken for ".a.1.<pid>...")
        parts = e.name[len(head) : -len(".wgtmp")].split(".")
        if len(parts) != 2 or not parts[0].isdigit() or _pid_alive(int(parts[0])):
            continue
        p = Path(e.path)
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


class PendingFile:
    """An output file that gets its final name only in :meth:`commit`.

    ``file`` is a ``w+b`` file object; until commit the data has no name (O_TMPFILE)
    or a temporary one.  :meth:`discard` drops it.  Use :func:`atomic_write` for one
    file; several PendingFiles let a caller commit a set of files together.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = 0o644,
        preallocate: int | None = None,
        overwrite: bool = True,
    ) -> None:
        dest = Path(path)
        self.dest = dest
        self.parent = dest.parent if str(dest.parent) else Path(".")
        self._mode = mode
        self._overwrite = overwrite
        self._tmp: Path | None = None
        self._done = False
        if not overwrite and dest.exists():
            raise DestinationError(
                f"{dest} already exists", hint="remove it or choose another output path"
            )
        if dest.is_dir():
            raise DestinationError(f"{dest} is a directory", hint="give a file path as the output")
        clean_stale(self.parent, dest.name)
        try:
            fd = _open_unnamed(self.parent)
        except OSError as exc:
            raise destination_error(exc, dest) from None
        if fd < 0:
            try:
                fd, tmp_name = tempfile.mkstemp(
                    prefix=_temp_prefix(dest.name), suffix=".wgtmp", dir=self.parent
                )
            except OSError as exc:
                raise destination_error(exc, dest) from None
            self._tmp = Path(tmp_name)
        self.fd = fd
        self.file: BinaryIO = os.fdopen(fd, "w+b")
        if preallocate:
            try:
                os.posix_fallocate(fd, 0, preallocate)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    self.discard()
                    raise destination_error(exc, dest) from None

    @property
    def unnamed(self) -> bool:
        """Whether the data has no name until commit (O_TMPFILE)."""
        return self._tmp is None

    def commit(self) -> None:
        """fsync, apply the mode, give the file its final name, fsync the directory."""
        dest = self.dest
        try:
            self.file.flush()
            os.fsync(self.fd)
            os.fchmod(self.fd, _umask_mode(self._mode))
            if self._tmp is None:
                self._link_into_place()
            else:
                os.replace(self._tmp, dest)
                self._tmp = None
            self.file.close()
        except OSError as exc:
            self.discard()
            raise destination_error(exc, dest) from None
        self._done = True
        fsync_dir(self.parent)

    def _link_into_place(self) -> None:
        try:
            _link_fd(self.fd, self.dest)
            return
        except FileExistsError:
            if not self._overwrite:
                raise
        # Replacing an existing file: link under a temporary name, then rename over it
        # (a complete, fsynced file is named only for that instant).
        tmp = self.parent / f"{_temp_prefix(self.dest.name)}{os.urandom(6).hex()}.wgtmp"
        _link_fd(self.fd, tmp)
        try:
            os.replace(tmp, self.dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def discard(self) -> None:
        """Drop the data (nothing is left under any name)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self.file.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    *,
    mode: int = 0o644,
    preallocate: int | None = None,
    overwrite: bool = True,
) -> Iterator[BinaryIO]:
    """Yield a binary file (``w+b``) that becomes ``path`` only if the block succeeds.

    ``mode`` is applied (minus the umask) before the file is named; use ``0o600`` for
    plaintext or secrets.  ``preallocate`` reserves the final size up front with
    ``posix_fallocate`` so a full disk is detected before any work is done (the
    caller must then write exactly that many bytes).
    ``overwrite=False`` refuses an existing destination.
    """
    pending = PendingFile(path, mode=mode, preallocate=preallocate, overwrite=overwrite)
    try:
        try:
            yield pending.file
        except OSError as exc:
            if exc.errno in _BODY_DEST_ERRNOS:
                raise destination_error(exc, pending.dest) from None
            raise
        pending.commit()
    finally:
        pending.discard()


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
    # A directory cannot be unnamed: a killed writer's one is removed by the next run.
    clean_stale(parent, dest.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest.name), suffix=".wgtmp", dir=parent))
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
