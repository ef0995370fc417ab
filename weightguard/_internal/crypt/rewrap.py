"""Rewrap: re-wrap each artifact's data key under the current key version (rotation),
rewriting only the header; the records are copied as they are."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from weightguard._internal.crypt.base import (
    Audit,
    emit,
    key_object,
    model_files,
    open_source,
    read_artifact_header,
    unwrap_grouped,
)
from weightguard._internal.format.layout import (
    MAGIC_PROBE,
    is_artifact,
    rewrapped_header,
)
from weightguard._internal.foundation.atomic import atomic_write
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.foundation.memory import wipe
from weightguard._internal.keys.providers import (
    provider_for,
    validate_context,
)
from weightguard.errors import (
    FormatError,
    IntegrityError,
    SourceError,
    WeightguardError,
)
from weightguard.manifest import WrappedKey


def artifacts_under(path: Path) -> list[Path]:
    if path.is_dir():
        out = []
        for rel in model_files(path):
            with open_source(path / rel) as f:
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


@renamed_keywords(to_uri="new_data_key", key_uri="data_key", allowed_keys="allow_key")
def rewrap(
    path: str | os.PathLike[str],
    new_data_key: str | None = None,
    *,
    data_key: str | None = None,
    context: str | None = None,
    audit: Audit | None = None,
    key_options: Mapping[str, Any] | None = None,
    to_key_options: Mapping[str, Any] | None = None,
    allow_key: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Rewrap the data key of an artifact (or of every artifact in a directory), in place.

    ``new_data_key``: the new provider/key (default: the same key URI, i.e. its latest
    version after a Vault ``rotate``).  ``data_key`` overrides where the old key is
    found.  Only the header changes; every record stays byte-identical.  Files are
    replaced atomically.  Returns ``{"files": {path: {"from": ..., "to": ...}}}``.
    """
    headers = []
    try:
        paths = artifacts_under(Path(path))
        for p in paths:
            with open_source(p) as f:
                h = read_artifact_header(f, p)
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
        emit(audit, "rewrap", outcome="error", reason=str(exc), object={"uri": str(path)})
        raise
    keys: list[bytearray] = []
    result: dict[str, Any] = {}
    try:
        keys = unwrap_grouped(headers, data_key, key_options, allow_key, [str(p) for p in paths])
        targets: dict[tuple[str, str], list[int]] = {}
        for i, h in enumerate(headers):
            new_uri = new_data_key or h.wrapped_key.uri
            ctx = validate_context(context or h.wrapped_key.context)
            targets.setdefault((new_uri, ctx), []).append(i)
        new_wrapped: dict[int, WrappedKey] = {}
        for (uri, ctx), idxs in targets.items():
            provider = provider_for(uri, **dict(to_key_options or key_options or {}))
            for i, w in zip(idxs, provider.wrap_many([keys[i] for i in idxs], ctx), strict=True):
                new_wrapped[i] = w
        for i, (p, h) in enumerate(zip(paths, headers, strict=True)):
            new, preamble = rewrapped_header(h, keys[i], new_wrapped[i])
            with open_source(p) as f, atomic_write(p, preallocate=new.total_size) as out:
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
            emit(
                audit,
                "rewrap",
                object=key_object(nw, p),
                previous={"key_id": old.uri, "key_version": old.key_version},
            )
    except WeightguardError as exc:
        emit(audit, "rewrap", outcome="error", reason=str(exc), object={"uri": str(path)})
        raise
    finally:
        for k in keys:
            wipe(k)
    return {"files": result, "seconds": time.monotonic() - started}
