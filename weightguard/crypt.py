"""Encrypt, decrypt, rewrap and inspect weightguard artifacts (format: docs/FORMAT.md).

>>> from weightguard import crypt
>>> crypt.encrypt_model("llama-3.2-1b/", "release/llama-3.2-1b/", "vault://transit/models",
...                     context="acme/llama-3.2-1b")
>>> crypt.inspect("release/llama-3.2-1b/model.safetensors")["key"]["key_version"]
1
>>> crypt.rewrap("release/llama-3.2-1b/")  # after `bao write -f transit/keys/models/rotate`

Model directories keep their file names: every ``*.safetensors`` shard is encrypted in
place of the original name (the magic bytes make it unreadable as safetensors, so no
tool can mistake it for weights), ``*.safetensors.index.json`` and the other files are
copied unchanged (or encrypted as raw content with ``encrypt_other_files=True``), so the
index stays valid.  One data key per file; all keys of a model are wrapped/unwrapped in
one provider round trip where the provider batches (Vault Transit).
"""

from __future__ import annotations

import io
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from weightguard._internal.format.layout import (
    DEFAULT_CHUNK_SIZE,
    MAGIC_PROBE,
    TAG_SIZE,
    ArtifactHeader,
    ChunkCipher,
    FileRandomness,
    decrypt_stream,
    encrypt_stream,
    is_artifact,
    new_header,
    read_header,
    rewrapped_header,
)
from weightguard._internal.format.model_dir import is_index_file, is_weight_file
from weightguard._internal.format.safetensors import MAX_HEADER_SIZE, read_safetensors_header
from weightguard._internal.foundation.atomic import PendingFile, atomic_directory, atomic_write
from weightguard._internal.foundation.memory import wipe
from weightguard._internal.keys.providers import (
    KeyProvider,
    choose_key_uri,
    create_key_file,
    provider_for,
    validate_context,
)
from weightguard.errors import (
    ConfigError,
    FormatError,
    IntegrityError,
    SourceError,
    WeightguardError,
)
from weightguard.manifest import WrappedKey

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "KeyProvider",
    "PlaintextWriteWarning",
    "WrappedKey",
    "create_key_file",
    "decrypt_file",
    "decrypt_model",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_model",
    "inspect",
    "is_encrypted",
    "rewrap",
]

Progress = Callable[[int], None]


class PlaintextWriteWarning(UserWarning):
    """Decrypted (plaintext) weights are being written to disk."""


class _Audit(Protocol):
    def emit(self, event: str, **fields: Any) -> None: ...


def _workers(workers: int | None) -> int:
    if workers is not None:
        if workers < 1:
            raise ConfigError("workers must be >= 1")
        return workers
    from weightguard._internal.foundation.cpus import usable_cpus

    return min(usable_cpus(), 32)


def _emit(audit: _Audit | None, event: str, **fields: Any) -> None:
    if audit is not None:
        audit.emit(event, **fields)


def _key_object(w: WrappedKey, path: str | os.PathLike[str]) -> dict[str, Any]:
    return {
        "uri": os.fspath(path),
        "key_provider": w.provider,
        "key_id": w.uri,
        "key_version": w.key_version,
        "context": w.context,
    }


def _open_source(path: Path) -> BinaryIO:
    try:
        if path.is_dir():
            raise SourceError(f"{path} is a directory", hint="use the *_model function / a file")
        return open(path, "rb")
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist", hint="check the input path") from None
    except PermissionError:
        raise SourceError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise SourceError(f"{path} is a directory") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the weightguard artifact magic."""
    with _open_source(Path(path)) as f:
        return is_artifact(f.read(MAGIC_PROBE))


# --------------------------------------------------------------------------- encrypt


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
    with _open_source(src) as f:
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
    try:
        with atomic_write(dst, preallocate=header.total_size) as out:
            encrypt_stream(
                src,
                out.fileno(),
                header,
                preamble,
                cipher,
                workers=workers,
                progress=progress,
                src_path=label,
            )
            if after is not None:
                after()
    finally:
        cipher.wipe()
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
    audit: _Audit | None,
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
            workers=_workers(workers),
            progress=progress,
            label=label,
        )
    except WeightguardError as exc:
        _emit(
            audit, "encrypt", outcome="error", reason=str(exc), object=_key_object(wrapped, dst_p)
        )
        raise
    finally:
        wipe(data_key)
    _emit(
        audit,
        "encrypt",
        object=_key_object(wrapped, dst_p),
        bytes=header.plaintext_size,
        duration_s=time.monotonic() - started,
    )
    return _summary(header, dst_p)


def encrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    key_uri: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt_header: bool = False,
    context: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: _Audit | None = None,
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
        key_uri,
        ctx,
        chunk_size=chunk_size,
        encrypt_header=encrypt_header,
        workers=workers,
        progress=progress,
        audit=audit,
        key_options=key_options,
    )


def encrypt_bytes(
    data: bytes | bytearray | memoryview,
    dst: str | os.PathLike[str],
    key_uri: str,
    *,
    context: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt_header: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: _Audit | None = None,
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
            key_uri,
            ctx,
            chunk_size=chunk_size,
            encrypt_header=encrypt_header,
            workers=workers,
            progress=progress,
            audit=audit,
            key_options=key_options,
            label=f"<in-memory file for {os.fspath(dst)}>",
        )


def _model_files(src_dir: Path) -> list[Path]:
    if not src_dir.is_dir():
        raise SourceError(f"{src_dir} is not a directory", hint="give a model directory")
    files = []
    for root, dirs, names in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if not d.endswith(".wgtmp"))
        for name in sorted(names):
            p = Path(root, name)
            if p.is_file() and not name.endswith(".wgtmp"):  # skip our own temp files
                files.append(p.relative_to(src_dir))
    return files


def _read_index(path: Path) -> Any:
    """A ``*.safetensors.index.json``, read bounded and parsed by the one index rule."""
    from weightguard._internal.foundation.boundedjson import MAX_INDEX_BYTES, loads_index

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the index ({exc.strerror})") from None
    return loads_index(raw, what=str(path))


def _check_index(src_dir: Path, files: Sequence[Path]) -> None:
    present = {p.as_posix() for p in files}
    for rel in files:
        if not is_index_file(rel.name):
            continue
        index = _read_index(src_dir / rel)
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


def encrypt_model(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    key_uri: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt_header: bool = False,
    context: str | None = None,
    encrypt_other_files: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: _Audit | None = None,
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
    files = _model_files(src_p)
    _check_index(src_p, files)
    shards = [p for p in files if is_weight_file(p.name)]
    to_encrypt = [p for p in files if p in shards or encrypt_other_files]
    if not shards:
        raise FormatError(f"{src_p} contains no .safetensors files")
    ctx = validate_context(context or src_p.resolve().name)
    provider = provider_for(key_uri, **dict(key_options or {}))
    n_workers = _workers(workers)
    started = time.monotonic()
    keys = provider.generate_many(ctx, len(to_encrypt))  # one round trip
    result: dict[str, Any] = {}
    total = 0
    try:
        with atomic_directory(dst_p) as tmp:
            key_iter = iter(keys)
            for rel in files:
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                if rel in to_encrypt:
                    dk, wrapped = next(key_iter)
                    header = _encrypt_one(
                        src_p / rel,
                        out,
                        dk,
                        wrapped,
                        chunk_size=chunk_size,
                        encrypt_header=encrypt_header,
                        workers=n_workers,
                        progress=progress,
                        raw=rel not in shards,
                    )
                    result[rel.as_posix()] = _summary(header, dst_p / rel)
                    total += header.plaintext_size
                else:
                    try:
                        shutil.copyfile(src_p / rel, out)
                    except OSError as exc:
                        raise SourceError(f"cannot copy {src_p / rel}: {exc.strerror}") from None
                    result[rel.as_posix()] = "copied"
    except WeightguardError as exc:
        _emit(
            audit,
            "encrypt",
            outcome="error",
            reason=str(exc),
            object={"uri": str(dst_p), "key_id": key_uri, "context": ctx},
        )
        raise
    finally:
        for dk, _ in keys:
            wipe(dk)
    seconds = time.monotonic() - started
    first = keys[0][1]
    _emit(
        audit,
        "encrypt",
        object=_key_object(first, dst_p),
        bytes=total,
        duration_s=seconds,
        files=len(to_encrypt),
    )
    return {
        "files": result,
        "bytes": total,
        "seconds": seconds,
        "key": {"uri": first.uri, "key_version": first.key_version, "context": ctx},
    }


# --------------------------------------------------------------------------- decrypt


def _read_artifact_header(f: BinaryIO, path: Path) -> ArtifactHeader:
    return read_header(f, path=str(path))


def _unwrap_grouped(
    headers: Sequence[ArtifactHeader],
    key_uri: str | None,
    key_options: Mapping[str, Any] | None,
    allowed_keys: Iterable[str] | str | None = None,
    where: Sequence[str] | None = None,
) -> list[bytearray]:
    """Unwrap every header's data key; one ``unwrap_many`` per provider URI.

    The header's key reference is untrusted (see ``choose_key_uri``): every URI is
    chosen before any provider is contacted."""
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(headers):
        uri = choose_key_uri(
            h.wrapped_key.uri,
            key=key_uri,
            allowed=allowed_keys,
            where=where[i] if where else "the artifact",
        )
        groups.setdefault(uri, []).append(i)
    keys: list[bytearray | None] = [None] * len(headers)
    try:
        for uri, idxs in groups.items():
            provider: KeyProvider = provider_for(uri, **dict(key_options or {}))
            for i, dk in zip(
                idxs, provider.unwrap_many([headers[i].wrapped_key for i in idxs]), strict=True
            ):
                keys[i] = dk
    except BaseException:
        for k in keys:
            if k is not None:
                wipe(k)
        raise
    return [k for k in keys if k is not None]


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
    """Decrypt into ``dst``: a path (written atomically) or a caller's PendingFile."""
    cipher = ChunkCipher(header, data_key)
    try:
        size = os.fstat(f.fileno()).st_size
        if isinstance(dst, PendingFile):
            decrypt_stream(
                f.fileno(), dst.fd, cipher, src_size=size, workers=workers, progress=progress
            )
            return
        with atomic_write(dst, mode=0o600, preallocate=header.plaintext_size) as out:
            decrypt_stream(
                f.fileno(),
                out.fileno(),
                cipher,
                src_size=size,
                workers=workers,
                progress=progress,
            )
    finally:
        cipher.wipe()


def _warn_plaintext(dst: Path) -> None:
    warnings.warn(
        f"writing decrypted plaintext weights to {dst}; protect and delete them when done",
        PlaintextWriteWarning,
        stacklevel=3,
    )


def _decrypt_failed(audit: _Audit | None, exc: WeightguardError, obj: dict[str, Any]) -> None:
    event = "tamper.detected" if isinstance(exc, IntegrityError) else "decrypt"
    _emit(
        audit,
        event,
        outcome="error" if event == "decrypt" else "denied",
        reason=str(exc),
        object=obj,
    )


def decrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    key_uri: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: _Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
    allowed_keys: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Decrypt an artifact back to the original file, byte for byte (written atomically,
    mode 0600).  Emits :class:`PlaintextWriteWarning`.  ``key_uri`` is the caller's
    key (overriding the reference recorded in the header); without it the header's
    reference must be allowed by ``allowed_keys`` / ``$WEIGHTGUARD_ALLOWED_KEYS`` (see
    :func:`weightguard._internal.keys.providers.choose_key_uri`)."""
    src_p, dst_p = Path(src), Path(dst)
    started = time.monotonic()
    obj: dict[str, Any] = {"uri": str(src_p)}
    try:
        with _open_source(src_p) as f:
            header = _read_artifact_header(f, src_p)
            obj = _key_object(header.wrapped_key, src_p)
            (dk,) = _unwrap_grouped([header], key_uri, key_options, allowed_keys, [str(src_p)])
            try:
                _warn_plaintext(dst_p)
                _decrypt_one(
                    f, src_p, dst_p, header, dk, workers=_workers(workers), progress=progress
                )
            finally:
                wipe(dk)
    except WeightguardError as exc:
        _decrypt_failed(audit, exc, obj)
        raise
    _emit(
        audit,
        "decrypt",
        object=obj,
        bytes=header.plaintext_size,
        duration_s=time.monotonic() - started,
        destination=str(dst_p),
    )
    return _summary(header, src_p)


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
        with _open_source(src_p / rel) as f:
            if not is_artifact(f.read(MAGIC_PROBE)):
                if is_weight_file(rel.name):
                    raise IntegrityError(
                        "weight file is not a weightguard artifact (damaged or replaced); "
                        "nothing was decrypted",
                        path=str(src_p / rel),
                    )
                continue
            f.seek(0)
            headers[rel] = _read_artifact_header(f, src_p / rel)
    present = {p.as_posix() for p in files}
    for rel in files:
        if not is_index_file(rel.name) or rel in headers:
            continue  # an encrypted index is checked by its own AEAD when decrypted
        index = _read_index(src_p / rel)
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


def decrypt_model(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    key_uri: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    audit: _Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
    allowed_keys: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Decrypt every artifact in a model directory (one unwrap round trip per provider);
    other files are copied.  ``dst_dir`` appears complete or not at all: a damaged,
    truncated or missing shard fails the whole call (audited, nothing left)."""
    src_p, dst_p = Path(src_dir), Path(dst_dir)
    started = time.monotonic()
    obj = {"uri": str(src_p)}
    keys: list[bytearray] = []
    pending: list[PendingFile] = []
    total = 0
    try:
        files = _model_files(src_p)
        headers = _model_headers(src_p, files)
        order = list(headers)
        keys = _unwrap_grouped(
            [headers[r] for r in order],
            key_uri,
            key_options,
            allowed_keys,
            [str(src_p / r) for r in order],
        )
        key_of = dict(zip(order, keys, strict=True))
        n_workers = _workers(workers)
        _warn_plaintext(dst_p)
        # Files stay unnamed (O_TMPFILE) until the whole model decrypted, so a crash
        # leaves at most an empty temporary directory (removed by the next run).
        with atomic_directory(dst_p) as tmp:
            for rel in files:
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                if rel in headers:
                    pf = PendingFile(out, mode=0o600, preallocate=headers[rel].plaintext_size)
                    pending.append(pf)
                    with _open_source(src_p / rel) as f:
                        _decrypt_one(
                            f,
                            src_p / rel,
                            pf,
                            headers[rel],
                            key_of[rel],
                            workers=n_workers,
                            progress=progress,
                        )
                    total += headers[rel].plaintext_size
                else:
                    pf = PendingFile(out, mode=0o644)
                    pending.append(pf)
                    try:
                        with open(src_p / rel, "rb") as other:
                            shutil.copyfileobj(other, pf.file)
                    except OSError as exc:
                        raise SourceError(f"cannot copy {src_p / rel}: {exc.strerror}") from None
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
    _emit(
        audit,
        "decrypt",
        object=obj,
        bytes=total,
        duration_s=seconds,
        files=len(headers),
        destination=str(dst_p),
    )
    return {"files": sorted(r.as_posix() for r in headers), "bytes": total, "seconds": seconds}


# --------------------------------------------------------------------------- rewrap


def _artifacts_under(path: Path) -> list[Path]:
    if path.is_dir():
        out = []
        for rel in _model_files(path):
            with _open_source(path / rel) as f:
                if is_artifact(f.read(MAGIC_PROBE)):
                    out.append(path / rel)
        if not out:
            raise FormatError(f"{path} contains no weightguard artifacts")
        return out
    return [path]


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length - done, src_off + done, dst_off + done)
        except OSError:
            n = 0
        if n == 0:  # fallback: plain read/write
            buf = os.pread(src_fd, min(8 << 20, length - done), src_off + done)
            if not buf:
                raise SourceError("artifact ended while copying its records")
            n = os.pwrite(dst_fd, buf, dst_off + done)
        done += n


def rewrap(
    path: str | os.PathLike[str],
    to_uri: str | None = None,
    *,
    key_uri: str | None = None,
    context: str | None = None,
    audit: _Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
    to_key_options: Mapping[str, Any] | None = None,
    allowed_keys: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Rewrap the data key of an artifact (or of every artifact in a directory), in place.

    ``to_uri``: the new provider/key (default: the same key URI, i.e. its latest
    version after a Vault ``rotate``).  ``key_uri`` overrides where the old key is
    found.  Only the header changes; every record stays byte-identical.  Files are
    replaced atomically.  Returns ``{"files": {path: {"from": ..., "to": ...}}}``.
    """
    headers = []
    try:
        paths = _artifacts_under(Path(path))
        for p in paths:
            with _open_source(p) as f:
                h = _read_artifact_header(f, p)
                size = os.fstat(f.fileno()).st_size
            if size != h.total_size:
                raise IntegrityError(
                    f"artifact is {size} bytes but its header declares {h.total_size}; "
                    "not rewrapping",
                    path=str(p),
                )
            headers.append(h)
        started = time.monotonic()
    except WeightguardError as exc:
        _emit(audit, "rewrap", outcome="error", reason=str(exc), object={"uri": str(path)})
        raise
    keys: list[bytearray] = []
    result: dict[str, Any] = {}
    try:
        keys = _unwrap_grouped(headers, key_uri, key_options, allowed_keys, [str(p) for p in paths])
        targets: dict[tuple[str, str], list[int]] = {}
        for i, h in enumerate(headers):
            new_uri = to_uri or h.wrapped_key.uri
            ctx = validate_context(context or h.wrapped_key.context)
            targets.setdefault((new_uri, ctx), []).append(i)
        new_wrapped: dict[int, WrappedKey] = {}
        for (uri, ctx), idxs in targets.items():
            provider = provider_for(uri, **dict(to_key_options or key_options or {}))
            for i, w in zip(idxs, provider.wrap_many([keys[i] for i in idxs], ctx), strict=True):
                new_wrapped[i] = w
        for i, (p, h) in enumerate(zip(paths, headers, strict=True)):
            new, preamble = rewrapped_header(h, keys[i], new_wrapped[i])
            with _open_source(p) as f, atomic_write(p, preallocate=new.total_size) as out:
                st = os.fstat(f.fileno())
                os.pwrite(out.fileno(), preamble, 0)
                _copy_range(
                    f.fileno(),
                    out.fileno(),
                    h.preamble_size,
                    new.preamble_size,
                    h.total_size - h.preamble_size,
                )
                os.fchmod(out.fileno(), st.st_mode & 0o777)
            old, nw = h.wrapped_key, new.wrapped_key
            result[str(p)] = {
                "from": {"uri": old.uri, "key_version": old.key_version},
                "to": {"uri": nw.uri, "key_version": nw.key_version},
            }
            _emit(
                audit,
                "rewrap",
                object=_key_object(nw, p),
                previous={"key_id": old.uri, "key_version": old.key_version},
            )
    except WeightguardError as exc:
        _emit(audit, "rewrap", outcome="error", reason=str(exc), object={"uri": str(path)})
        raise
    finally:
        for k in keys:
            wipe(k)
    return {"files": result, "seconds": time.monotonic() - started}


# --------------------------------------------------------------------------- inspect


def _summary(header: ArtifactHeader, path: Path) -> dict[str, Any]:
    w = header.wrapped_key
    info: dict[str, Any] = {
        "path": str(path),
        "format": "weightguard",
        "version": header.version,
        "content": header.content,
        "algorithms": {"aead": "AES-256-GCM", "kdf": "HKDF-SHA256", "mac": "HMAC-SHA256"},
        "chunk_size": header.chunk_size,
        "num_chunks": header.num_chunks,
        "data_size": header.data_size,
        "st_header_size": header.st_header_size,
        "plaintext_size": header.plaintext_size,
        "artifact_size": header.total_size,
        "record_overhead": header.data_offset
        - header.st_header_size
        + TAG_SIZE * header.num_chunks,
        "header_encrypted": header.header_encrypted,
        "key": {
            "provider": w.provider,
            "uri": w.uri,
            "key_version": w.key_version,
            "context": w.context,
        },
    }
    if header.tensors is not None:
        meta = header.tensors.get("__metadata__")
        tensors = {
            name: {
                "dtype": e["dtype"],
                "shape": e["shape"],
                "nbytes": e["data_offsets"][1] - e["data_offsets"][0],
            }
            for name, e in header.tensors.items()
            if name != "__metadata__"
        }
        info["tensors"] = tensors
        info["num_tensors"] = len(tensors)
        info["metadata"] = meta
    return info


def inspect(
    path: str | os.PathLike[str],
    *,
    verify: bool = False,
    key_uri: str | None = None,
    key_options: Mapping[str, Any] | None = None,
    allowed_keys: Iterable[str] | str | None = None,
    audit: _Audit | None = None,
) -> dict[str, Any]:
    """Header summary of an artifact (sizes, key, tensor table unless the header is
    encrypted); for a directory, ``{"files": {name: summary}}``.

    Without a key nothing is authenticated (``"authenticated": False``); with
    ``verify=True`` the data key is unwrapped and the key commitment and header MAC
    are checked (records are not read); the key is chosen as for :func:`decrypt_file`
    (``key_uri``, else an allowed header reference), and a refusal is audited.
    """
    p = Path(path)
    if p.is_dir():
        return {
            "files": {
                a.relative_to(p).as_posix(): inspect(
                    a,
                    verify=verify,
                    key_uri=key_uri,
                    key_options=key_options,
                    allowed_keys=allowed_keys,
                    audit=audit,
                )
                for a in _artifacts_under(p)
            }
        }
    with _open_source(p) as f:
        header = _read_artifact_header(f, p)
        size = os.fstat(f.fileno()).st_size
    info = _summary(header, p)
    info["file_size"] = size
    info["complete"] = size == header.total_size
    info["authenticated"] = False
    if verify:
        try:
            (dk,) = _unwrap_grouped([header], key_uri, key_options, allowed_keys, [str(p)])
            try:
                ChunkCipher(header, dk).wipe()
            finally:
                wipe(dk)
        except WeightguardError as exc:
            event = "tamper.detected" if isinstance(exc, IntegrityError) else "verify.failed"
            _emit(
                audit,
                event,
                outcome="denied",
                reason=f"inspect --verify: {exc}",
                object=_key_object(header.wrapped_key, p),
            )
            raise
        info["authenticated"] = True
    return info
