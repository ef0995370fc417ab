"""``weightguard fetch``: verify + decrypt a model into a directory (tmpfs by default).

For inference servers that cannot call Python: the same one-pass pipeline as the
loader, then each weight file is written back as the original safetensors file, mode
0600, atomically (temp file + fsync + rename).  The destination must be on tmpfs/ramfs
(checked with statfs) unless ``allow_disk`` is given, so plaintext weights never reach
a disk by accident.  Other files of a model directory (config, tokenizer) are copied
after checking them against the signature.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightguard._internal.atomic import atomic_write
from weightguard._internal.hashing import whole_hasher
from weightguard.errors import DestinationError, IntegrityError, UnsafeOptionRequired

__all__ = ["FetchResult", "fetch_model", "is_memory_fs"]

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6


def _fs_type(path: str) -> int | None:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is the first field
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return int(ctypes.c_long.from_buffer(buf).value)


def is_memory_fs(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lives on tmpfs or ramfs (statfs f_type)."""
    return _fs_type(os.fspath(path)) in (TMPFS_MAGIC, RAMFS_MAGIC)


@dataclass
class FetchResult:
    directory: str
    files: list[str]
    bytes: int


def fetch_model(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    policy: Any,
    allow_disk: bool = False,
    file_mode: int = 0o600,
    dir_mode: int = 0o700,
    **options: Any,
) -> FetchResult:
    """Verify + decrypt ``source`` into ``dest``; every file 0600, all or nothing.

    ``file_mode``/``dir_mode``: for a server running as another user of the same group
    (KServe: the pod's ``fsGroup``), e.g. 0o640/0o750; never readable by others.

    Each weight file is streamed record by record (read once, digest-checked, decrypted
    into a per-worker buffer, ``pwrite`` into a 0600 temporary file in ``dest``, buffer
    zeroed), then fsynced and renamed.  On any failure every file this call wrote is
    removed (and ``dest`` too if this call created it and it is empty).
    """
    from weightguard.loader import open_model

    if file_mode & 0o7137 or dir_mode & 0o7027:
        raise UnsafeOptionRequired(
            f"modes {file_mode:o}/{dir_mode:o} would let others read or write the weights",
            hint="use at most 0640 for files and 0750 for directories",
        )
    out = Path(dest)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DestinationError(f"cannot create {out}: {exc.strerror}") from None
    if not allow_disk and not is_memory_fs(out):
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise UnsafeOptionRequired(
            f"{out} is not on tmpfs: decrypted weights would be written to disk",
            hint="use a memory-backed directory (emptyDir medium: Memory, /dev/shm) or "
            "pass --allow-disk",
        )
    written: list[str] = []
    made_dirs: list[Path] = []
    total = 0
    try:
        with open_model(source, "cpu", policy=policy, **options) as handle:
            for name in handle.files:
                target = out / name
                _mkdirs(target.parent, out, made_dirs, dir_mode)
                size = handle._plain_size(name)
                with atomic_write(target, mode=file_mode, preallocate=size) as f:
                    total += handle._stream_to(name, f.fileno())
                written.append(name)
            _copy_other_files(handle, out, written, made_dirs, file_mode, dir_mode)
            # The plaintext now sits in files: say where, next to the load.* events.
            handle._ctx.audit.emit(
                "fetch",
                object={"uri": str(source), "destination": str(out), "files": len(written)},
                bytes=total,
                memory_fs=not allow_disk or is_memory_fs(out),
            )
    except BaseException:
        for name in written:
            with contextlib.suppress(OSError):
                (out / name).unlink()
        for d in reversed(made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return FetchResult(str(out), written, total)


def _mkdirs(d: Path, root: Path, made: list[Path], mode: int = 0o700) -> None:
    """Create ``d`` (``mode``) and missing parents below ``root``, remembering them."""
    missing: list[Path] = []
    p = d
    while p != root and not p.exists():
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        m.mkdir(mode=mode)
        os.chmod(m, mode)  # mkdir's mode is masked by the umask
        made.append(m)


def _copy_other_files(
    handle: Any,
    out: Path,
    written: list[str],
    made: list[Path],
    file_mode: int = 0o600,
    dir_mode: int = 0o700,
) -> None:
    """Copy the non-weight files of a model directory, checked against the signature."""
    loc = handle._location
    if not loc.is_dir:
        return
    signed = handle._signed_all or {}
    for name in loc.names():
        if name in written or name in ("model.sig",):
            continue
        fd = signed.get(name)
        if fd is None and not handle._unsafe:
            continue  # not covered by the signature: not copied
        data = loc.read_small(name)
        if fd is not None:
            h = whole_hasher(fd.resource_algorithm, path=name)
            h.update(data)
            if not hmac.compare_digest(h.digest(), fd.resource_digest):
                raise IntegrityError(
                    f"content differs from the signed {fd.resource_algorithm} digest", path=name
                )
        target = out / name
        _mkdirs(target.parent, out, made, dir_mode)
        try:
            with atomic_write(target, mode=file_mode) as f:
                f.write(data)
        except OSError as exc:  # pragma: no cover - atomic_write maps these
            raise DestinationError(f"{target}: {exc.strerror}") from None
        written.append(name)
