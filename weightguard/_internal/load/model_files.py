"""The files of a model as the loader opens them: which ones, their signed digests, and
each one's head read once, checked against the signature, then parsed.

Nothing read from the model chooses anything before it matched the signature: the
index is checked as bytes before it is parsed, and without an index the set of weight
files is the signed one, never what a listing happens to show (issue 12.1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weightguard._internal.format.model_dir import top_level_weights
from weightguard._internal.format.safetensors import MAX_HEADER_SIZE, TensorInfo
from weightguard._internal.foundation.names import safe_relative_name
from weightguard._internal.load.pipeline import digest_matches
from weightguard._internal.load.plan import Geometry
from weightguard._internal.load.sources import Location, Source
from weightguard.errors import CoverageError, FormatError, IntegrityError, VerificationError

__all__ = [
    "INDEX_NAME",
    "ModelFile",
    "SignedDigests",
    "check_signed_bytes",
    "digests_for",
    "open_file",
    "select_files",
]

INDEX_NAME = "model.safetensors.index.json"
_PLAIN_UNSIGNED_CHUNK = 8 * 1024 * 1024  # record size of an unsigned plain file's load
_PROBE = 64 * 1024  # first read of an unsigned file: enough for most headers


@dataclass
class ModelFile:
    name: str  # relative name within the model (or the file's base name)
    display: str  # path or s3 URI for messages
    source: Source
    encrypted: bool
    geometry: Geometry
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None
    header_digest: str
    header: Any = None  # ArtifactHeader for encrypted files
    cipher: Any = None  # ChunkCipher once the key was unwrapped
    head: bytes = b""  # the verified bytes [0, data_offset) of an artifact
    st_raw: bytes = b""  # the original safetensors header segment (u64 length + JSON)


def select_files(loc: Location, signed: Mapping[str, Any] | None) -> list[str]:
    """The weight files of a model: the index's shards, or every top-level .safetensors.

    ``signed`` (the verified manifest's files) decides for a signed load: the index is
    used only after its bytes matched the signed digest, and without an index the set
    is the signed ``.safetensors`` files, never what the listing happens to show.
    """
    if not loc.is_dir:
        return loc.names()
    names = loc.names() if signed is None else sorted(signed)
    if INDEX_NAME in names:
        from weightguard._internal.foundation.boundedjson import MAX_INDEX_BYTES, loads_index

        raw = loc.read_small(INDEX_NAME, limit=MAX_INDEX_BYTES)
        if signed is not None:  # verified before a byte of it is parsed
            check_signed_bytes(loc, INDEX_NAME, raw, signed[INDEX_NAME])
        index = loads_index(raw, what=f"{loc.uri}/{INDEX_NAME}")
        try:
            weight_map = index["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise FormatError(
                f"{loc.uri}/{INDEX_NAME}: not a valid safetensors index (no weight_map)"
            ) from None
        for shard in shards:
            safe_relative_name(shard, f"{loc.uri}/{INDEX_NAME}")
        missing = [s for s in shards if s not in names]
        if missing:
            if signed is not None:
                raise CoverageError(
                    f"{loc.uri}: the signed index names shards the signature does not "
                    f"cover: {', '.join(missing[:5])}",
                    hint="re-sign the whole model directory",
                )
            raise FormatError(
                f"{loc.uri}: the index names shards that are missing: {', '.join(missing[:5])}",
                hint="fetch the whole model directory",
            )
        return shards
    shards = top_level_weights(names)
    if not shards:
        raise FormatError(
            f"{loc.uri}: no .safetensors files in the model directory",
            hint="point at a model file or a directory holding .safetensors shards",
        )
    return shards


def check_signed_bytes(loc: Location, name: str, data: bytes, fd: Any) -> None:
    """``data`` (read once, then used) must be exactly the signed file ``name``: the one
    check for every small file (index, config, tokenizer) before anything parses it."""
    from weightguard._internal.signing.hashing import whole_hasher

    h = whole_hasher(fd.resource_algorithm, path=name)
    h.update(data)
    if len(data) != int(fd.size) or not hmac.compare_digest(h.digest(), fd.resource_digest):
        raise IntegrityError(
            f"{name} differs from the signed {fd.resource_algorithm} digest",
            path=f"{loc.uri.rstrip('/')}/{name}" if loc.is_dir else loc.uri,
        )


@dataclass(frozen=True)
class SignedDigests:
    size: int
    head: int
    stride: int
    digests: tuple[bytes, ...]
    algorithm: str  # chunk digest algorithm named in the signed record


def digests_for(
    loc: Location, files: list[str], signed: Mapping[str, Any]
) -> dict[str, SignedDigests]:
    """The signed chunk digests of each weight file (every one must have them)."""
    out: dict[str, SignedDigests] = {}
    for name in files:
        fd = signed.get(name if loc.is_dir else ".")
        if fd is None:
            raise CoverageError(
                f"{loc.uri}: the signature does not cover {name}",
                hint="re-sign the whole model directory",
            )
        if not getattr(fd, "chunked", True):
            raise VerificationError(
                f"{loc.uri}: the signature of {name} has no chunk digests (signed by "
                "another tool), so it cannot be checked in one pass",
                hint="sign the model with `weightguard sign`",
            )
        out[name] = SignedDigests(
            int(fd.size),
            int(fd.head),
            int(fd.stride),
            tuple(bytes(d) for d in fd.digests),
            str(getattr(fd, "algorithm", "sha256-chunked-v1")),
        )
    return out


class _SourceReader:
    """A minimal read-only file object over a Source (for header parsers)."""

    def __init__(self, source: Source, prefix: bytes = b"") -> None:
        self._src = source
        self._pos = 0
        self._prefix = prefix

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._src.size - self._pos
        n = max(0, min(n, self._src.size - self._pos))
        if self._pos + n <= len(self._prefix):
            data = self._prefix[self._pos : self._pos + n]
        else:
            data = self._src.read(self._pos, n)
        self._pos += len(data)
        return data

    def fileno(self) -> int:  # pragma: no cover - parsers must be given the size
        raise OSError("no file descriptor")


def open_file(loc: Location, name: str, signed: SignedDigests | None) -> ModelFile:
    """Read a file's head once, check it against the signature, parse it."""
    from weightguard._internal.format import layout as fmt
    from weightguard._internal.format.safetensors import parse_header_json

    src = loc.open(name)
    display = src.name
    try:
        if signed is not None:
            if src.size != signed.size:
                raise IntegrityError(
                    f"file is {src.size} bytes but the signature says {signed.size}",
                    path=display,
                )
            head_len = signed.head
            if not 8 <= head_len <= min(src.size, MAX_HEADER_SIZE + fmt.MAX_HEADER_LEN + 1024):
                raise IntegrityError(f"signed head length {head_len} is implausible", path=display)
            head = src.read(0, head_len)
            if not signed.digests or not digest_matches(
                head, signed.digests[0], signed.algorithm, path=display
            ):
                raise IntegrityError(
                    "header bytes do not match the signed digest", path=display, chunk=0
                )
        else:
            head = src.read(0, min(src.size, _PROBE))
        if len(head) < 8:
            raise FormatError(f"{display}: {src.size} bytes is too small for a model file")
        header_digest = "sha256:" + hashlib.sha256(head).hexdigest()
        if fmt.is_artifact(head):
            reader = _SourceReader(src, head) if signed is None else _BytesReader(head)
            ah = fmt.read_header(reader, path=display)  # type: ignore[arg-type]
            if ah.content != "safetensors":
                raise FormatError(
                    f"{display}: artifact holds a {ah.content!r} file, not safetensors",
                    hint="decrypt it with `weightguard decrypt` instead",
                )
            if src.size != ah.total_size:
                raise IntegrityError(
                    f"artifact is {src.size} bytes, its header says {ah.total_size} "
                    "(truncated or extended)",
                    path=display,
                )
            stride = ah.chunk_size + fmt.TAG_SIZE
            if signed is not None:
                if signed.head != ah.data_offset or (signed.stride != stride and ah.num_chunks > 1):
                    raise IntegrityError(
                        "signed chunk layout does not match the artifact", path=display
                    )
                if len(signed.digests) != ah.num_chunks + 1:
                    raise IntegrityError(
                        f"signature has {len(signed.digests)} digests, artifact has "
                        f"{ah.num_chunks + 1} records",
                        path=display,
                    )
            else:
                head_end = ah.data_offset
                head = head[:head_end] if len(head) >= head_end else src.read(0, head_end)
            geo = Geometry(
                display,
                ah.data_offset,
                stride,
                ah.chunk_size,
                fmt.TAG_SIZE,
                ah.data_size,
                ah.num_chunks,
                signed.digests if signed else None,
                signed.algorithm if signed else "sha256-chunked-v1",
            )
            return ModelFile(
                name, display, src, True, geo, (), None, header_digest, header=ah, head=head
            )
        # Plain safetensors.
        n = int.from_bytes(head[:8], "little")
        if n > MAX_HEADER_SIZE or 8 + n > src.size:
            raise FormatError(
                f"{display}: not a safetensors file or a weightguard artifact (header length {n})"
            )
        if signed is not None:
            if signed.head != 8 + n:
                raise IntegrityError(
                    "signed head does not match the safetensors header", path=display
                )
            raw_json = head[8 : 8 + n]
        else:
            raw_json = head[8 : 8 + n] if len(head) >= 8 + n else src.read(8, n)
        data_size = src.size - 8 - n
        _, tensors, metadata, _ = parse_header_json(raw_json, data_size=data_size, path=display)
        if signed is not None:
            chunk = signed.stride
            num = (data_size + chunk - 1) // chunk if chunk > 0 else 0
            if chunk <= 0 or len(signed.digests) != num + 1:
                raise IntegrityError(
                    "signed chunk digests do not match the file's size", path=display
                )
        else:
            chunk = _PLAIN_UNSIGNED_CHUNK
            num = (data_size + chunk - 1) // chunk
        geo = Geometry(
            display,
            8 + n,
            chunk,
            chunk,
            0,
            data_size,
            num,
            signed.digests if signed else None,
            signed.algorithm if signed else "sha256-chunked-v1",
        )
        return ModelFile(
            name,
            display,
            src,
            False,
            geo,
            tensors,
            metadata,
            header_digest,
            st_raw=head[: 8 + n] if len(head) >= 8 + n else head[:8] + raw_json,
        )
    except BaseException:
        src.close()
        raise


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        out = self._data[self._pos : end]
        self._pos = end
        return out
