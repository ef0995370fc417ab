"""Moving released models: ``fetch_model`` (verify + decrypt into a directory, tmpfs by
default) and ``push_model`` (upload a release directory to S3).

For inference servers that cannot call Python: the same one-pass pipeline as the
loader, then each weight file is written back as the original safetensors file, mode
0600, all files named together only once every one verified (unnamed O_TMPFILE files
linked into place; see :mod:`weightguard._internal.foundation.atomic`).  The destination
must be on tmpfs/ramfs (checked with statfs) unless ``allow_disk`` is given, so plaintext
weights never reach a disk by accident.  Other files of a model directory (config,
tokenizer) are copied after checking them against the signature.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any, NoReturn

from weightguard._internal.foundation.atomic import PendingFile, destination_error
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.foundation.names import safe_join, unlinked_below
from weightguard._internal.load import push as _push
from weightguard._internal.signing.location import (
    PRIMARY_SIGNATURE,
    default_signature,
    signature_name,
)
from weightguard.errors import (
    DestinationError,
    FormatError,
    SourceError,
    UnsafeOptionRequired,
    WeightguardError,
)
from weightguard.manifest import FetchResult

__all__ = ["FetchResult", "fetch_model", "is_memory_fs", "push_model", "verify_release"]

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


@renamed_keywords(key="data_key", allowed_keys="allow_key")
def fetch_model(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    policy: Any,
    allow_disk: bool = False,
    replace: bool = False,
    file_mode: int = 0o600,
    dir_mode: int = 0o700,
    **options: Any,
) -> FetchResult:
    """Verify + decrypt ``source`` into ``dest``; every file 0600, all or nothing.

    ``file_mode``/``dir_mode``: for a server running as another user of the same group
    (KServe: the pod's ``fsGroup``), e.g. 0o640/0o750; never readable by others.

    Each weight file is streamed record by record (read once, digest-checked, decrypted
    into a per-worker buffer, ``pwrite`` into an unnamed 0600 file in ``dest``, buffer
    zeroed); once every file verified they are fsynced and linked into place.  On any
    failure nothing this call wrote keeps a name (and ``dest`` is removed too if this
    call created it and it is empty).

    A ``dest`` that already holds files is refused unless ``replace``: a model mixed
    with another's files would be served as one.  With ``replace`` what was there and
    is not part of this model is removed once the new files are all in place.
    """
    from weightguard.loader import open_model

    if file_mode & 0o7137 or dir_mode & 0o7027:
        raise UnsafeOptionRequired(
            f"modes {file_mode:o}/{dir_mode:o} would let others read or write the weights",
            hint="use at most 0640 for files and 0750 for directories",
        )
    out = Path(dest)
    created = not out.exists()
    before = _existing_files(out)
    _ready_destination(out, source, created, replace, allow_disk, options.get("audit"))
    written: list[str] = []
    pending: list[tuple[str, PendingFile]] = []
    made_dirs: list[Path] = []
    total = 0
    try:
        with open_model(source, "cpu", policy=policy, **options) as handle:
            # Every file is written unnamed (O_TMPFILE where supported) and only named
            # once the whole model verified: a failure or a SIGKILL midway leaves no
            # plaintext file, complete or partial, under any name.
            _precheck(handle, out)
            total = _write_unnamed(
                handle, out, str(source), pending, made_dirs, file_mode, dir_mode
            )
            _copy_other_files(handle, out, pending, made_dirs, file_mode, dir_mode)
            for name, pf in pending:
                pf.commit()
                written.append(name)
            _remove_stale(out, before, written)
            # The plaintext now sits in files: say where, next to the load.* events.
            handle._ctx.audit.emit(
                "fetch",
                object={"uri": str(source), "destination": str(out), "files": len(written)},
                bytes=total,
                memory_fs=not allow_disk or is_memory_fs(out),
            )
    except BaseException:
        _undo(out, pending, written, made_dirs, created)
        raise
    return FetchResult(str(out), written, total)


def _refuse_unloaded(
    exc: DestinationError | UnsafeOptionRequired,
    source: str | os.PathLike[str],
    out: Path,
    audit: Any,
) -> NoReturn:
    """Audit and raise a refusal made before the loader starts (its audit events would
    not say why); ``audit``: the caller's log, else one from the environment."""
    from weightguard.audit import AuditLog

    own = audit is None
    log = AuditLog.from_env() if audit is None else audit
    try:
        log.emit(
            "fetch",
            outcome="denied",
            reason=f"{type(exc).__name__}: {exc.message}",
            object={"uri": str(source), "destination": str(out)},
        )
    finally:
        if own:
            log.close()
    raise exc


def _ready_destination(
    out: Path,
    source: str | os.PathLike[str],
    created: bool,
    replace: bool,
    allow_disk: bool,
    audit: Any,
) -> None:
    """``out`` made (0700) and checked before anything is read: not a link, empty
    unless ``replace``, on tmpfs unless ``allow_disk`` (else removed again if this call
    created it); refusals audited."""
    if out.is_symlink():
        # The destination is resolved once, by the caller: a link planted there (an
        # image's /mnt/models, a shared volume) would send the plaintext elsewhere.
        _refuse_unloaded(
            DestinationError(
                f"{out} is a symbolic link (to {os.path.realpath(out)}): the model would be "
                "written wherever it points",
                hint="name the real directory",
            ),
            source,
            out,
            audit,
        )
    if out.is_dir() and any(out.iterdir()) and not replace:
        _refuse_unloaded(
            DestinationError(
                f"{out} is not empty: the model would be mixed with what is there",
                hint="use an empty directory, or pass --replace",
            ),
            source,
            out,
            audit,
        )
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DestinationError(f"cannot create {out}: {exc.strerror}") from None
    if not allow_disk and not is_memory_fs(out):
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        _refuse_unloaded(
            UnsafeOptionRequired(
                f"{out} is not on tmpfs: decrypted weights would be written to disk",
                hint="use a memory-backed directory (emptyDir medium: Memory, /dev/shm) or "
                "pass --allow-disk",
            ),
            source,
            out,
            audit,
        )


def _write_unnamed(
    handle: Any,
    out: Path,
    source: str,
    pending: list[tuple[str, PendingFile]],
    made_dirs: list[Path],
    file_mode: int,
    dir_mode: int,
) -> int:
    """Stream each weight file, as the original safetensors file, into an unnamed file
    under ``out`` (appended to ``pending`` as it is made); the bytes written."""
    total = 0
    for name in handle.files:
        target = safe_join(out, name, source)
        _mkdirs(target.parent, out, made_dirs, dir_mode)
        _contained(target, out, handle)
        size = handle._plain_size(name)
        pf = PendingFile(target, mode=file_mode, preallocate=size)
        pending.append((name, pf))
        try:
            total += handle._stream_to(name, pf.fd)
        except OSError as exc:
            raise destination_error(exc, target) from None
    return total


def _undo(
    out: Path,
    pending: list[tuple[str, PendingFile]],
    written: list[str],
    made_dirs: list[Path],
    created: bool,
) -> None:
    """After a failure: nothing this fetch wrote keeps a name (and ``out`` goes too if
    this call created it and it is empty)."""
    for _, pf in pending:
        pf.discard()
    for name in written:
        with contextlib.suppress(OSError):
            (out / name).unlink()
    for d in reversed(made_dirs):
        with contextlib.suppress(OSError):
            d.rmdir()
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()


def _existing_files(d: Path) -> list[str]:
    """Every entry under ``d`` that is not a directory (symlinks included), relative."""
    if not d.is_dir():
        return []
    found: list[str] = []
    for root, dirs, files in os.walk(d):
        links = [x for x in dirs if os.path.islink(os.path.join(root, x))]
        found += [os.path.relpath(os.path.join(root, n), d) for n in (*files, *links)]
    return sorted(found)


def _remove_stale(out: Path, before: list[str], written: list[str]) -> None:
    """Remove what ``replace`` replaces: the old contents that were not rewritten now."""
    keep = set(written)
    for name in before:
        if name not in keep:
            with contextlib.suppress(OSError):
                (out / name).unlink()
    for root, dirs, _ in os.walk(out, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / d).rmdir()  # only empty ones go


def _precheck(handle: Any, out: Path) -> None:
    """Before a byte is written: every file this fetch reads is inside the model and
    every target inside ``out``, by real paths (foundation.names); refusals audited."""
    loc = handle._location
    try:
        names = list(handle.files)
        if loc.is_dir:
            names += [n for n in loc.names() if n not in names]
            for name in names:
                loc.local_file(name)  # a local file reached through a link: refused
        for name in names:
            _contained(safe_join(out, name, loc.uri), out, handle)
    except WeightguardError as exc:
        if not isinstance(exc, DestinationError):  # _contained audits its own
            _audit_denied(handle, out, exc)
        raise


def _audit_denied(handle: Any, out: Path, exc: WeightguardError) -> None:
    handle._ctx.audit.emit(
        "fetch",
        outcome="denied",
        reason=f"{type(exc).__name__}: {exc.message}",
        object={"uri": handle._ctx.uri, "destination": str(out)},
    )


def _contained(target: Path, out: Path, handle: Any) -> None:
    """Refuse (audited) a target whose directory, under ``out``, is reached through a
    link (one left in ``out`` by an earlier model and kept by ``replace``)."""
    if unlinked_below(out, target.parent):
        return
    exc = DestinationError(
        f"cannot write {target}: a directory on its way below {out} is a symbolic link "
        f"(to {os.path.realpath(target.parent)}); nothing was written",
        hint="remove the link from the destination, or fetch into an empty directory",
    )
    _audit_denied(handle, out, exc)
    raise exc


def _mkdirs(d: Path, root: Path, made: list[Path], mode: int = 0o700) -> None:
    """Create ``d`` (``mode``) and missing parents below ``root``, remembering them."""
    missing: list[Path] = []
    p = d
    while p != root and not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        m.mkdir(mode=mode)
        os.chmod(m, mode)  # mkdir's mode is masked by the umask
        made.append(m)


def _copy_other_files(
    handle: Any,
    out: Path,
    pending: list[tuple[str, PendingFile]],
    made: list[Path],
    file_mode: int = 0o600,
    dir_mode: int = 0o700,
) -> None:
    """Stage the non-weight files of a model directory, checked against the signature."""
    loc = handle._location
    if not loc.is_dir:
        return
    signed = handle._signed_all or {}
    staged = {name for name, _ in pending}
    for name in loc.names():
        if name in staged or name == PRIMARY_SIGNATURE:
            continue
        fd = signed.get(name)
        if fd is None and not handle._unsafe:
            continue  # not covered by the signature: not copied
        data = loc.read_small(name)
        if fd is not None:  # whole-file digest, or each shard's (model_signing shards)
            from weightguard._internal.load.model_files import check_signed_bytes

            check_signed_bytes(loc, name, data, fd)
        target = safe_join(out, name, loc.uri)
        _mkdirs(target.parent, out, made, dir_mode)
        _contained(target, out, handle)
        pf = PendingFile(target, mode=file_mode)
        pending.append((name, pf))
        try:
            pf.file.write(data)
        except OSError as exc:
            raise destination_error(exc, target) from None


def push_model(
    directory: str | os.PathLike[str],
    destination: str,
    *,
    endpoint_url: str | None = None,
    client: Any = None,
    progress: Any = None,
    replace: bool = False,
    audit: Any = None,
) -> dict[str, Any]:
    """Upload a release directory under ``destination`` (``s3://bucket/prefix``), audited.

    A prefix that already holds objects is refused unless ``replace=True`` (then it
    holds exactly the new release afterwards).  Writes one ``push`` event to ``audit``
    (an :class:`~weightguard.audit.AuditLog`; default: from the environment): the
    destination, files, bytes and what was replaced, or the refusal and why.
    """
    import time

    from weightguard.audit import AuditLog

    log = AuditLog.from_env() if audit is None else audit
    obj = {"uri": destination, "path": os.fspath(directory)}
    t0 = time.monotonic()
    try:
        res = _push.push_model(
            directory,
            destination,
            endpoint_url=endpoint_url,
            client=client,
            progress=progress,
            replace=replace,
        )
    except WeightguardError as exc:
        with contextlib.suppress(WeightguardError):  # the caller must see the original error
            log.emit(
                "push",
                outcome="denied",
                reason=f"{type(exc).__name__}: {exc.message}",
                object=obj,
                duration_s=time.monotonic() - t0,
                replace=replace,
            )
        if audit is None:
            log.close()
        raise
    try:
        log.emit(
            "push",
            object={**obj, "uri": res["destination"]},
            bytes=res["bytes"],
            duration_s=time.monotonic() - t0,
            files=len(res["files"]),
            replaced=res["replaced"],
            removed=len(res["removed"]),
        )
    finally:
        if audit is None:
            log.close()
    return res


def verify_release(
    uri: str,
    policy: Any,
    *,
    signature: str | os.PathLike[str] | None = None,
    allow_unsigned: Any = (),
    audit: Any = None,
    s3: Any = None,
    workdir: str | os.PathLike[str] | None = None,
    check_chunk_digests: bool = False,
) -> Any:
    """Verify a release in S3 as an auditor does: no data key, nothing decrypted.

    ``uri`` is ``s3://bucket/prefix/`` (a directory release with its ``model.sig`` and
    co-signatures in ``model.sig.d/``) or ``s3://bucket/key`` (one file and its
    ``<key>.sig``).  Its objects -- ciphertext, as released -- are copied once (bounded
    listing, ranged GETs) into a private temporary directory (``workdir``, default the
    system's), verified there by :func:`weightguard.verifying.verify_bundle` with every
    byte hashed, and removed.  ``signature`` is a local bundle to use instead of the
    released one.  ``check_chunk_digests``: as for ``verify_bundle``.  Audited as
    ``verify.ok`` / ``verify.failed`` with ``uri``.  Returns the
    :class:`~weightguard.manifest.VerifiedManifest` (its ``root`` is gone).
    """
    import shutil
    import tempfile
    import time

    from weightguard import verifying
    from weightguard._internal.load.sources import open_location

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wg-verify-", dir=workdir))  # mode 0700
    try:
        try:
            loc = open_location(uri, s3=s3)
            names = list(loc.names())
            if not loc.is_dir and signature is None:
                names.append(signature_name(names[0]))
            _one_kind_per_name(names, uri)
            for name in names:
                target = safe_join(tmp, name, uri)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with loc.open(name) as src, open(target, "xb") as out:
                        off = 0
                        while off < src.size:
                            n = min(8 << 20, src.size - off)
                            out.write(src.read(off, n))
                            off += n
                except OSError as exc:
                    raise SourceError(
                        f"cannot copy {name} of {uri} for verification: {exc.strerror}"
                    ) from exc
            model = tmp if loc.is_dir else tmp / names[0]
            if signature is not None:
                sig = Path(signature)
            else:
                sig = Path(default_signature(model, is_dir=loc.is_dir))
            manifest = verifying.verify_bundle(
                model,
                sig,
                policy,
                allow_unsigned=allow_unsigned,
                check_chunk_digests=check_chunk_digests,
            )
        except WeightguardError as exc:
            # name what the auditor gave, not the temporary copy
            exc.message = exc.message.replace(str(tmp), uri.rstrip("/"))
            if isinstance(getattr(exc, "path", None), str):
                exc.path = exc.path.replace(str(tmp), uri.rstrip("/"))  # type: ignore[attr-defined]
            if audit is not None:
                audit.emit(
                    "verify.failed",
                    outcome="denied",
                    reason=exc.message,
                    object={"uri": uri},
                )
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if audit is not None:
        audit.emit(
            "verify.ok",
            object={"uri": uri, "digest": manifest.bundle_digest, "signer": manifest.signer},
            duration_s=time.monotonic() - t0,
            hashed=manifest.hashed,
            files=len(manifest.files),
        )
    return manifest


def _one_kind_per_name(names: list[str], uri: str) -> None:
    """Refuse a listing where one name is an object and a folder of another object
    (S3 stores ``p/config.json`` and ``p/config.json/x`` side by side; a release on
    disk cannot hold both, and a signature covers one of them at most)."""
    objects = set(names)
    for name in sorted(names):
        parts = name.split("/")
        for k in range(1, len(parts)):
            folder = "/".join(parts[:k])
            if folder in objects:
                raise FormatError(
                    f"listing of {uri}: {folder} is an object and the folder of {name}; "
                    "a release holds one or the other"
                )
