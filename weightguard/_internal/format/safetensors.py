"""Bounded parser and validator of plain safetensors headers.

A safetensors file is ``u64 LE N`` || ``N`` bytes of UTF-8 JSON || data section.  The JSON
maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the data section) plus an optional ``"__metadata__"`` string->string map.

This module checks everything the safetensors library checks (and a little more),
before anything else trusts the header: the length is bounded and inside the file, the
JSON is an object with no duplicate keys, every dtype is known, shapes are lists of
non-negative integers, ``end - begin`` equals the tensor's byte size, and the tensors
tile the data section exactly (sorted by offset, no gap, no overlap, ending at its
end).  Errors are :class:`FormatError` naming the file and the tensor.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from weightguard._internal.foundation import boundedjson
from weightguard.errors import FormatError, TruncatedError

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "TensorInfo",
    "parse_header_json",
    "read_safetensors_header",
    "validate_header_dict",
]

# Same bound as the safetensors library (100 MB of JSON).
MAX_HEADER_SIZE = 100_000_000
MAX_RANK = 64

# Bits per element of every dtype safetensors (0.4 .. 0.8) can write.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    raw: bytes  # the exact 8-byte length + JSON header segment of the file
    header: dict[str, Any]  # parsed JSON (tensor entries and ``__metadata__``)
    tensors: tuple[TensorInfo, ...]  # sorted by data offset
    metadata: dict[str, str] | None
    data_size: int  # bytes of the data section

    @property
    def st_header_size(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return (
            f"SafetensorsHeader(tensors={len(self.tensors)}, header_size={len(self.raw)}, "
            f"data_size={self.data_size})"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header_json(
    raw_json: bytes, *, data_size: int | None, path: str
) -> tuple[dict[str, Any], tuple[TensorInfo, ...], dict[str, str] | None, int]:
    """Parse and validate a safetensors JSON header.

    ``data_size``: the data section's size when known (the file's size minus the
    header); the tensors must cover it exactly.  Returns ``(header, tensors sorted by
    offset, metadata, data_size)``.
    """
    # Depth 3 is the format (header -> tensor -> shape); a little slack for a clear
    # schema error instead of a depth error on near-misses.
    header = boundedjson.loads(
        raw_json,
        what=f"{path}: safetensors header",
        max_bytes=MAX_HEADER_SIZE,
        max_depth=4,
        int_range=boundedjson.INT64,
        hint="the file is corrupt or not a safetensors file",
    )
    tensors, metadata, end = validate_header_dict(header, data_size=data_size, path=path)
    return header, tensors, metadata, end


def validate_header_dict(
    header: Any, *, data_size: int | None, path: str
) -> tuple[tuple[TensorInfo, ...], dict[str, str] | None, int]:
    """Validate a parsed safetensors header; see :func:`parse_header_json`."""
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    metadata: dict[str, str] | None = None
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise FormatError(f"{path}: __metadata__ must map strings to strings")
            metadata = entry
            continue
        where = f"{path}: tensor {name[:200]!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{where} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise FormatError(f"{where} has unknown dtype {str(dtype)[:40]!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_RANK
            or not all(_is_int(d) and d >= 0 for d in shape)
        ):
            raise FormatError(f"{where} has an invalid shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise FormatError(f"{where} has invalid data_offsets")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise FormatError(
                f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but dtype "
                f"{dtype} and shape {shape} need {bits / 8:g}"
            )
        tensors.append(TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1]))
    tensors.sort(key=lambda t: (t.begin, t.end))
    cursor = 0
    for t in tensors:
        if t.begin != cursor:
            kind = "overlaps the previous tensor" if t.begin < cursor else "leaves a gap"
            raise FormatError(
                f"{path}: tensor {t.name[:200]!r} at data offset {t.begin} {kind} "
                f"(expected offset {cursor})"
            )
        cursor = t.end
    if data_size is not None and cursor != data_size:
        if cursor > data_size:
            raise FormatError(
                f"{path}: tensor data ends at offset {cursor}, past the end of the "
                f"{data_size}-byte data section (out-of-range offsets or truncated file)"
            )
        raise FormatError(
            f"{path}: the data section has {data_size - cursor} bytes not covered by any tensor"
        )
    return tuple(tensors), metadata, cursor


def read_safetensors_header(
    f: BinaryIO, *, path: str, file_size: int | None = None
) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file open as ``f`` (at offset 0).

    ``file_size``: the file's size (default: fstat of ``f``); used to bound the header
    length and to check that the tensors cover the data section exactly.
    """
    if file_size is None:
        file_size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise TruncatedError(f"{path}: {len(head)} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_SIZE:
        raise FormatError(
            f"{path}: safetensors header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit",
            hint="the file is corrupt, encrypted, or not a safetensors file",
        )
    if 8 + n > file_size:
        raise TruncatedError(
            f"{path}: safetensors header length {n} points past the end of the "
            f"{file_size}-byte file"
        )
    if n < 2:
        raise FormatError(f"{path}: safetensors header length {n} is too small")
    raw_json = f.read(n)
    if len(raw_json) != n:
        raise TruncatedError(f"{path}: file ended inside the safetensors header")
    if raw_json[:1] != b"{":
        raise FormatError(f"{path}: safetensors header does not start with '{{'")
    data_size = file_size - 8 - n
    header, tensors, metadata, _ = parse_header_json(raw_json, data_size=data_size, path=path)
    return SafetensorsHeader(
        raw=head + raw_json,
        header=header,
        tensors=tensors,
        metadata=metadata,
        data_size=data_size,
    )
