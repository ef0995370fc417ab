"""Decrypt artifacts back to the original safetensors bytes, a whole model or nothing:
every header is read and every key unwrapped before the first plaintext byte is
written, and a damaged, truncated or missing shard fails the model."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from weightguard._internal.crypt.base import (
    Audit,
    PlaintextWriteWarning,
    Progress,
    emit,
    key_object,
    model_files,
    open_source,
    read_artifact_header,
    read_index,
    summary,
    unwrap_grouped,
    worker_count,
)
from weightguard._internal.format.layout import (
    MAGIC_PROBE,
    ArtifactHeader,
    ChunkCipher,
    decrypt_stream,
    is_artifact,
)
from weightguard._internal.format.model_dir import is_index_file, is_weight_file
from weightguard._internal.foundation.atomic import PendingFile, atomic_directory, atomic_write
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.foundation.memory import wipe
from weightguard.errors import (
    FormatError,
    IntegrityError,
    SourceError,
    WeightguardError,
)


def _decrypt_one(
    f: BinaryIO,
    src: Path,
    dst: Path | PendingFile,
    header: ArtifactHeader,
    data_key: bytearray,
    *,
    workers: int,
    progress: Progress | None,
) -> None:
    """Decrypt into ``dst``: a path (written atomically) or a caller's PendingFile.

    ``progress`` is told the artifact's bytes done: each record's plaintext as it is
    decrypted, then what its header and tags add, so it adds up to the file's size."""
    cipher = ChunkCipher(header, data_key)
    reported = [0]

    def counted(n: int) -> None:
        reported[0] += n
        if progress is not None:
            progress(n)

    try:
        size = os.fstat(f.fileno()).st_size
        if isinstance(dst, PendingFile):
            decrypt_stream(
                f.fileno(), dst.fd, cipher, src_size=size, workers=workers, progress=counted
            )
        else:
            with atomic_write(dst, mode=0o600, preallocate=header.plaintext_size) as out:
                decrypt_stream(
                    f.fileno(),
                    out.fileno(),
                    cipher,
                    src_size=size,
                    workers=workers,
                    progress=counted,
                )
    finally:
        cipher.wipe()
    if progress is not None and size > reported[0]:
        progress(size - reported[0])


def _warn_plaintext(dst: Path) -> None:
    warnings.warn(
        f"writing decrypted plaintext weights to {dst}; protect and delete them when done",
        PlaintextWriteWarning,
        stacklevel=3,
    )


def _decrypt_failed(audit: Audit | None, exc: WeightguardError, obj: dict[str, Any]) -> None:
    event = "tamper.detected" if isinstance(exc, IntegrityError) else "decrypt"
    emit(
        audit,
        event,
        outcome="error" if event == "decrypt" else "denied",
        reason=str(exc),
        object=obj,
    )


@renamed_keywords(key_uri="data_key", allowed_keys="allow_key")
def decrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    data_key: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
    allow_key: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Decrypt an artifact back to the original file, byte for byte (written atomically,
    mode 0600).  Emits :class:`PlaintextWriteWarning`.  ``data_key`` is the caller's
    key (overriding the reference recorded in the header); without it the header's
    reference must be allowed by ``allow_key`` / ``$WEIGHTGUARD_ALLOW_KEY`` (see
    :func:`weightguard._internal.keys.providers.choose_key_uri`)."""
    src_p, dst_p = Path(src), Path(dst)
    started = time.monotonic()
    obj: dict[str, Any] = {"uri": str(src_p)}
    try:
        with open_source(src_p) as f:
            header = read_artifact_header(f, src_p)
            obj = key_object(header.wrapped_key, src_p)
            (dk,) = unwrap_grouped([header], data_key, key_options, allow_key, [str(src_p)])
            try:
                _warn_plaintext(dst_p)
                _decrypt_one(
                    f, src_p, dst_p, header, dk, workers=worker_count(workers), progress=progress
                )
            finally:
                wipe(dk)
    except WeightguardError as exc:
        _decrypt_failed(audit, exc, obj)
        raise
    emit(
        audit,
        "decrypt",
        object=obj,
        bytes=header.plaintext_size,
        duration_s=time.monotonic() - started,
        destination=str(dst_p),
    )
    return summary(header, src_p)


def _model_headers(src_p: Path, files: Sequence[Path]) -> dict[Path, ArtifactHeader]:
    """Every artifact's header; a model is decrypted whole or not at all.

    Every ``*.safetensors`` file must be an artifact (encrypt_model encrypts all of
    them, so a plain-looking shard is a damaged one, never one to copy), and every
    shard a plain index names must be present.  Sizes are checked by the record
    reader once the header is authenticated (a truncated shard fails there).
    """
    from weightguard._internal.foundation.names import safe_relative_name

    headers: dict[Path, ArtifactHeader] = {}
    for rel in files:
        with open_source(src_p / rel) as f:
            if not is_artifact(f.read(MAGIC_PROBE)):
                if is_weight_file(rel.name):
                    raise IntegrityError(
                        "weight file is not a weightguard artifact (damaged or replaced); "
                        "nothing was decrypted",
                        path=str(src_p / rel),
                    )
                continue
            f.seek(0)
            headers[rel] = read_artifact_header(f, src_p / rel)
    present = {p.as_posix() for p in files}
    for rel in files:
        if not is_index_file(rel.name) or rel in headers:
            continue  # an encrypted index is checked by its own AEAD when decrypted
        index = read_index(src_p / rel)
        try:
            shards = {str(v) for v in index["weight_map"].values()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FormatError(f"{src_p / rel} is not a valid safetensors index") from None
        base = rel.parent.as_posix()
        for shard in sorted(shards):
            safe_relative_name(shard, str(src_p / rel))
            want = f"{base}/{shard}" if base != "." else shard
            if want not in present:
                raise IntegrityError(
                    f"the index lists shard {shard!r}, which is missing from {src_p}; "
                    "nothing was decrypted",
                    path=str(src_p / rel),
                    hint="the model directory is incomplete; fetch it again",
                )
    if not headers:
        raise FormatError(f"{src_p} contains no weightguard artifacts")
    return headers


def _copy_other(src: Path, pf: PendingFile, progress: Progress | None) -> None:
    """Copy a file that is not an artifact (config, tokenizer) as it is."""
    try:
        with open(src, "rb") as other:
            shutil.copyfileobj(other, pf.file)
            copied = other.tell()
    except OSError as exc:
        raise SourceError(f"cannot copy {src}: {exc.strerror}") from None
    if progress is not None:  # every source byte counts, copied ones too
        progress(copied)


def _write_model(
    src_p: Path,
    tmp: Path,
    files: Sequence[Path],
    headers: dict[Path, ArtifactHeader],
    key_of: dict[Path, bytearray],
    pending: list[PendingFile],
    *,
    workers: int,
    progress: Progress | None,
) -> int:
    """Decrypt each artifact and copy each other file of the model into ``tmp``, as
    files that stay unnamed (O_TMPFILE, added to ``pending``) until the caller commits
    them; the plaintext bytes written."""
    total = 0
    for rel in files:
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel not in headers:
            pf = PendingFile(out, mode=0o644)
            pending.append(pf)
            _copy_other(src_p / rel, pf, progress)
            continue
        pf = PendingFile(out, mode=0o600, preallocate=headers[rel].plaintext_size)
        pending.append(pf)
        with open_source(src_p / rel) as f:
            _decrypt_one(
                f,
                src_p / rel,
                pf,
                headers[rel],
                key_of[rel],
                workers=workers,
                progress=progress,
            )
        total += headers[rel].plaintext_size
    return total


@renamed_keywords(key_uri="data_key", allowed_keys="allow_key")
def decrypt_model(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    data_key: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
    allow_key: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Decrypt every artifact in a model directory (one unwrap round trip per provider);
    other files are copied.  ``dst_dir`` appears complete or not at all: a damaged,
    truncated or missing shard fails the whole call (audited, nothing left)."""
    src_p, dst_p = Path(src_dir), Path(dst_dir)
    started = time.monotonic()
    obj = {"uri": str(src_p)}
    keys: list[bytearray] = []
    pending: list[PendingFile] = []
    try:
        files = model_files(src_p)
        headers = _model_headers(src_p, files)
        order = list(headers)
        keys = unwrap_grouped(
            [headers[r] for r in order],
            data_key,
            key_options,
            allow_key,
            [str(src_p / r) for r in order],
        )
        key_of = dict(zip(order, keys, strict=True))
        n_workers = worker_count(workers)
        _warn_plaintext(dst_p)
        # Files stay unnamed (O_TMPFILE) until the whole model decrypted, so a crash
        # leaves at most an empty temporary directory (removed by the next run).
        with atomic_directory(dst_p) as tmp:
            total = _write_model(
                src_p, tmp, files, headers, key_of, pending, workers=n_workers, progress=progress
            )
            for pf in pending:
                pf.commit()
    except WeightguardError as exc:
        _decrypt_failed(audit, exc, obj)
        raise
    finally:
        for pf in pending:
            pf.discard()
        for k in keys:
            wipe(k)
    seconds = time.monotonic() - started
    emit(
        audit,
        "decrypt",
        object=obj,
        bytes=total,
        duration_s=seconds,
        files=len(headers),
        destination=str(dst_p),
    )
    return {"files": sorted(r.as_posix() for r in headers), "bytes": total, "seconds": seconds}
