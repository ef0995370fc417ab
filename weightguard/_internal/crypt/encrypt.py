"""Encrypt safetensors files and model directories into weightguard artifacts
(docs/FORMAT.md): one data key per file, wrapped by the caller's key provider."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from weightguard._internal.crypt.base import (
    Audit,
    Progress,
    emit,
    key_object,
    model_files,
    open_source,
    read_index,
    summary,
    worker_count,
)
from weightguard._internal.format.layout import (
    DEFAULT_CHUNK_SIZE,
    MAGIC_PROBE,
    ArtifactHeader,
    ChunkCipher,
    FileRandomness,
    encrypt_stream,
    is_artifact,
    new_header,
)
from weightguard._internal.format.model_dir import is_index_file, is_weight_file
from weightguard._internal.format.safetensors import MAX_HEADER_SIZE, read_safetensors_header
from weightguard._internal.foundation.atomic import atomic_directory, atomic_write
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.foundation.memory import wipe
from weightguard._internal.keys.providers import (
    provider_for,
    validate_context,
)
from weightguard.errors import (
    FormatError,
    SourceError,
    WeightguardError,
)
from weightguard.manifest import WrappedKey


def _head_of(view: memoryview) -> io.BytesIO:
    """A copy of the start of an in-memory safetensors file: its 8-byte length and JSON
    header (bounded), never tensor data, for the header parser."""
    n = int.from_bytes(view[:8], "little") if len(view) >= 8 else 0
    return io.BytesIO(bytes(view[: min(len(view), 8 + min(n, MAX_HEADER_SIZE + 1))]))


def _encrypt_one(
    src: Path | memoryview,
    dst: Path,
    data_key: bytearray,
    wrapped: WrappedKey,
    *,
    chunk_size: int,
    encrypt_header: bool,
    workers: int,
    progress: Progress | None,
    raw: bool = False,
    randomness: FileRandomness | None = None,
    label: str | None = None,
) -> ArtifactHeader:
    """Encrypt the file ``src``, or the whole plaintext file held in memory by ``src``
    (a byte memoryview; ``label`` names it in errors), into ``dst`` atomically."""
    if isinstance(src, memoryview):
        view = src.cast("B") if src.format != "B" or src.ndim != 1 else src
        return _encrypt_source(
            _head_of(view),
            view,
            len(view),
            label or "<memory>",
            dst,
            data_key,
            wrapped,
            chunk_size=chunk_size,
            encrypt_header=encrypt_header,
            workers=workers,
            progress=progress,
            raw=raw,
            randomness=randomness,
        )
    with open_source(src) as f:
        st0 = os.fstat(f.fileno())

        def unchanged() -> None:
            st1 = os.fstat(f.fileno())
            if (st1.st_size, st1.st_mtime_ns) != (st0.st_size, st0.st_mtime_ns):
                raise SourceError(
                    f"{src} changed while it was being encrypted; nothing was written",
                    hint="do not modify the input while encrypting, then retry",
                )

        return _encrypt_source(
            f,
            f.fileno(),
            st0.st_size,
            str(src),
            dst,
            data_key,
            wrapped,
            chunk_size=chunk_size,
            encrypt_header=encrypt_header,
            workers=workers,
            progress=progress,
            raw=raw,
            randomness=randomness,
            after=unchanged,
        )


def _encrypt_source(
    head: BinaryIO,
    src: int | memoryview,
    size: int,
    label: str,
    dst: Path,
    data_key: bytearray,
    wrapped: WrappedKey,
    *,
    chunk_size: int,
    encrypt_header: bool,
    workers: int,
    progress: Progress | None,
    raw: bool,
    randomness: FileRandomness | None,
    after: Callable[[], None] | None = None,
) -> ArtifactHeader:
    """The encrypt path shared by files and buffers: ``head`` reads the start of the
    plaintext sequentially (header parsing), ``src`` is read positionally by the records;
    ``after()`` runs before the output is committed."""
    if is_artifact(head.read(MAGIC_PROBE)):
        raise FormatError(
            f"{label} is already a weightguard artifact", hint="encrypt the original file"
        )
    head.seek(0)
    if raw:
        st_header: dict[str, Any] | None = None
        st_size, data_size, content = 0, size, "raw"
    else:
        sth = read_safetensors_header(head, path=label, file_size=size)
        st_header, st_size, data_size = sth.header, sth.st_header_size, sth.data_size
        content = "safetensors"
    header, preamble = new_header(
        data_key=data_key,
        wrapped_key=wrapped,
        content=content,
        st_header=st_header,
        st_header_size=st_size,
        data_size=data_size,
        chunk_size=chunk_size,
        header_encrypted=encrypt_header,
        randomness=randomness,
        path=str(dst),
    )
    cipher = ChunkCipher(header, data_key)  # self-check: commitment + MAC
    reported = [0]

    def counted(n: int) -> None:
        reported[0] += n
        if progress is not None:
            progress(n)

    try:
        with atomic_write(dst, preallocate=header.total_size) as out:
            encrypt_stream(
                src,
                out.fileno(),
                header,
                preamble,
                cipher,
                workers=workers,
                progress=counted,
                src_path=label,
            )
            if after is not None:
                after()
    finally:
        cipher.wipe()
    if progress is not None and size > reported[0]:
        progress(size - reported[0])  # the safetensors header: not a data chunk
    return header


def _encrypt_single(
    src: Path | memoryview,
    dst_p: Path,
    key_uri: str,
    ctx: str,
    *,
    chunk_size: int,
    encrypt_header: bool,
    workers: int | None,
    progress: Progress | None,
    audit: Audit | None,
    key_options: Mapping[str, Any] | None,
    label: str | None = None,
) -> dict[str, Any]:
    provider = provider_for(key_uri, **dict(key_options or {}))
    started = time.monotonic()
    data_key, wrapped = provider.generate(ctx)
    try:
        header = _encrypt_one(
            src,
            dst_p,
            data_key,
            wrapped,
            chunk_size=chunk_size,
            encrypt_header=encrypt_header,
            workers=worker_count(workers),
            progress=progress,
            label=label,
        )
    except WeightguardError as exc:
        emit(audit, "encrypt", outcome="error", reason=str(exc), object=key_object(wrapped, dst_p))
        raise
    finally:
        wipe(data_key)
    emit(
        audit,
        "encrypt",
        object=key_object(wrapped, dst_p),
        bytes=header.plaintext_size,
        duration_s=time.monotonic() - started,
    )
    return summary(header, dst_p)


@renamed_keywords(key_uri="data_key")
def encrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    data_key: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt_header: bool = False,
    context: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Encrypt one ``.safetensors`` file into an artifact at ``dst`` (written atomically).

    ``context``: the model identity bound to the wrapped key (Vault derivation context,
    KMS encryption context); default: the file name without ``.safetensors``.
    ``progress(n)`` is called with plaintext bytes done.  Returns :func:`inspect`'s summary.
    """
    src_p, dst_p = Path(src), Path(dst)
    ctx = validate_context(context or src_p.name.removesuffix(".safetensors"))
    return _encrypt_single(
        src_p,
        dst_p,
        data_key,
        ctx,
        chunk_size=chunk_size,
        encrypt_header=encrypt_header,
        workers=workers,
        progress=progress,
        audit=audit,
        key_options=key_options,
    )


@renamed_keywords(key_uri="data_key")
def encrypt_bytes(
    data: bytes | bytearray | memoryview,
    dst: str | os.PathLike[str],
    data_key: str,
    *,
    context: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt_header: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Encrypt a whole safetensors file held in memory (``data``) into an artifact at
    ``dst`` (written atomically), exactly as :func:`encrypt_file` would encrypt it from
    disk, so plaintext never touches the disk.  ``data`` is only read; the caller wipes
    it (pass a ``bytearray``).  ``context`` is required (there is no file name to take
    it from).  Returns :func:`inspect`'s summary."""
    ctx = validate_context(context)
    with memoryview(data) as view:
        return _encrypt_single(
            view,
            Path(dst),
            data_key,
            ctx,
            chunk_size=chunk_size,
            encrypt_header=encrypt_header,
            workers=workers,
            progress=progress,
            audit=audit,
            key_options=key_options,
            label=f"<in-memory file for {os.fspath(dst)}>",
        )


def _check_index(src_dir: Path, files: Sequence[Path]) -> None:
    present = {p.as_posix() for p in files}
    for rel in files:
        if not is_index_file(rel.name):
            continue
        index = read_index(src_dir / rel)
        try:
            shards = set(index["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FormatError(f"{src_dir / rel} is not a valid safetensors index") from None
        base = rel.parent.as_posix()
        for shard in sorted(shards):
            want = f"{base}/{shard}" if base != "." else str(shard)
            if want not in present:
                raise FormatError(
                    f"{src_dir / rel} lists shard {shard!r}, which is not in {src_dir}",
                    hint="the model directory is incomplete; download it again",
                )


class _ModelPlan(NamedTuple):
    """What :func:`encrypt_model` does with each file of a model directory."""

    files: list[Path]  # every file, relative to the model directory
    shards: list[Path]  # the safetensors files (artifacts of a tensor table)
    to_encrypt: list[Path]  # the shards, and the other files when they are encrypted too


def _plan_model(src_dir: Path, encrypt_other_files: bool) -> _ModelPlan:
    """The files of a model directory and which are encrypted; a directory whose index
    names a missing shard, or with no safetensors file, is refused."""
    files = model_files(src_dir)
    _check_index(src_dir, files)
    shards = [p for p in files if is_weight_file(p.name)]
    to_encrypt = [p for p in files if p in shards or encrypt_other_files]
    if not shards:
        raise FormatError(f"{src_dir} contains no .safetensors files")
    return _ModelPlan(files, shards, to_encrypt)


def _copy_other(src: Path, out: Path, progress: Progress | None) -> str:
    """Copy a file that is not encrypted (config, tokenizer) as it is."""
    try:
        shutil.copyfile(src, out)
    except OSError as exc:
        raise SourceError(f"cannot copy {src}: {exc.strerror}") from None
    if progress is not None:  # every source byte counts, copied ones too
        progress(out.stat().st_size)
    return "copied"


def _write_model(
    src_p: Path,
    dst_p: Path,
    tmp: Path,
    plan: _ModelPlan,
    keys: Sequence[tuple[bytearray, WrappedKey]],
    *,
    chunk_size: int,
    encrypt_header: bool,
    workers: int,
    progress: Progress | None,
) -> tuple[dict[str, Any], int]:
    """Encrypt or copy each file of the model into ``tmp`` (each encrypted one under the
    next data key of ``keys``); ``({name: summary | "copied"}, plaintext bytes)``."""
    result: dict[str, Any] = {}
    total = 0
    key_iter = iter(keys)
    for rel in plan.files:
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel not in plan.to_encrypt:
            result[rel.as_posix()] = _copy_other(src_p / rel, out, progress)
            continue
        dk, wrapped = next(key_iter)
        header = _encrypt_one(
            src_p / rel,
            out,
            dk,
            wrapped,
            chunk_size=chunk_size,
            encrypt_header=encrypt_header,
            workers=workers,
            progress=progress,
            raw=rel not in plan.shards,
        )
        result[rel.as_posix()] = summary(header, dst_p / rel)
        total += header.plaintext_size
    return result, total


@renamed_keywords(key_uri="data_key")
def encrypt_model(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    data_key: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt_header: bool = False,
    context: str | None = None,
    encrypt_other_files: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Encrypt a Hugging Face-style model directory into ``dst_dir`` (must not exist or
    be empty; built in a temporary sibling and renamed, so it appears complete or not
    at all).

    Every ``*.safetensors`` file is encrypted under its own data key, keeping its name;
    other files are copied (``encrypt_other_files``: encrypted as raw artifacts, same
    names).  ``context`` defaults to the source directory's name.  Returns
    ``{"files": {name: summary | "copied"}, "bytes": n, "seconds": s, "key": {...}}``.
    """
    src_p, dst_p = Path(src_dir), Path(dst_dir)
    plan = _plan_model(src_p, encrypt_other_files)
    ctx = validate_context(context or src_p.resolve().name)
    provider = provider_for(data_key, **dict(key_options or {}))
    n_workers = worker_count(workers)
    started = time.monotonic()
    keys = provider.generate_many(ctx, len(plan.to_encrypt))  # one round trip
    try:
        with atomic_directory(dst_p) as tmp:
            result, total = _write_model(
                src_p,
                dst_p,
                tmp,
                plan,
                keys,
                chunk_size=chunk_size,
                encrypt_header=encrypt_header,
                workers=n_workers,
                progress=progress,
            )
    except WeightguardError as exc:
        emit(
            audit,
            "encrypt",
            outcome="error",
            reason=str(exc),
            object={"uri": str(dst_p), "key_id": data_key, "context": ctx},
        )
        raise
    finally:
        for dk, _ in keys:
            wipe(dk)
    seconds = time.monotonic() - started
    first = keys[0][1]
    emit(
        audit,
        "encrypt",
        object=key_object(first, dst_p),
        bytes=total,
        duration_s=seconds,
        files=len(plan.to_encrypt),
    )
    return {
        "files": result,
        "bytes": total,
        "seconds": seconds,
        "key": {"uri": first.uri, "key_version": first.key_version, "context": ctx},
    }
