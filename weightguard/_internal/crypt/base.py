"""What encrypt, decrypt, rewrap and inspect share: opening sources, a model
directory's file set and index, reading artifact headers, unwrapping their data keys
(one round trip per provider, every reference chosen by the caller's rule first), the
summary each operation returns, and audit emission."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from weightguard._internal.format.layout import (
    MAGIC_PROBE,
    TAG_SIZE,
    ArtifactHeader,
    is_artifact,
    read_header,
)
from weightguard._internal.foundation.memory import wipe
from weightguard._internal.foundation.names import real_inside
from weightguard._internal.keys.unwrap import unwrap_groups
from weightguard.errors import (
    ConfigError,
    FormatError,
    SourceError,
)
from weightguard.manifest import WrappedKey


class PlaintextWriteWarning(UserWarning):
    """Decrypted (plaintext) weights are being written to disk."""


class Audit(Protocol):
    def emit(self, event: str, **fields: Any) -> None: ...


Progress = Callable[[int], None]


def worker_count(workers: int | None) -> int:
    if workers is not None:
        if workers < 1:
            raise ConfigError("workers must be >= 1")
        return workers
    from weightguard._internal.foundation.cpus import usable_cpus

    return min(usable_cpus(), 32)


def emit(audit: Audit | None, event: str, **fields: Any) -> None:
    if audit is not None:
        audit.emit(event, **fields)


def key_object(w: WrappedKey, path: str | os.PathLike[str]) -> dict[str, Any]:
    return {
        "uri": os.fspath(path),
        "key_provider": w.provider,
        "key_id": w.uri,
        "key_version": w.key_version,
        "context": w.context,
    }


def open_source(path: Path) -> BinaryIO:
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
    with open_source(Path(path)) as f:
        return is_artifact(f.read(MAGIC_PROBE))


def model_files(src_dir: Path) -> list[Path]:
    if not src_dir.is_dir():
        raise SourceError(f"{src_dir} is not a directory", hint="give a model directory")
    files = []
    for root, dirs, names in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if not d.endswith(".wgtmp"))
        for name in sorted(names):
            p = Path(root, name)
            if p.is_file() and not name.endswith(".wgtmp"):  # skip our own temp files
                if real_inside(p, (src_dir,)) is None:  # foundation.names: by real paths
                    raise SourceError(
                        f"{p} is a symbolic link leading outside {src_dir} "
                        f"(to {os.path.realpath(p)}); refused",
                        hint="copy the file into the model directory",
                    )
                files.append(p.relative_to(src_dir))
    return files


def read_index(path: Path) -> Any:
    """A ``*.safetensors.index.json``, read bounded and parsed by the one index rule."""
    from weightguard._internal.foundation.boundedjson import MAX_INDEX_BYTES, loads_index

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the index ({exc.strerror})") from None
    return loads_index(raw, what=str(path))


def read_artifact_header(f: BinaryIO, path: Path) -> ArtifactHeader:
    return read_header(f, path=str(path))


def unwrap_grouped(
    headers: Sequence[ArtifactHeader],
    key_uri: str | None,
    key_options: Mapping[str, Any] | None,
    allowed_keys: Iterable[str] | str | None = None,
    where: Sequence[str] | None = None,
) -> list[bytearray]:
    """Unwrap every header's data key, in order (the caller wipes them): the one
    sequence in :func:`weightguard._internal.keys.unwrap.unwrap_groups`."""
    keys: list[bytearray | None] = [None] * len(headers)
    try:
        for group in unwrap_groups(
            [h.wrapped_key for h in headers],
            key=key_uri,
            key_options=key_options,
            allowed_keys=allowed_keys,
            where=where,
        ):
            for i, dk in zip(group.indexes, group.data_keys, strict=True):
                keys[i] = dk
    except BaseException:
        for k in keys:
            if k is not None:
                wipe(k)
        raise
    return [k for k in keys if k is not None]


def summary(header: ArtifactHeader, path: Path) -> dict[str, Any]:
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
