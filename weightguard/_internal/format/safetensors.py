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

A header names at most :data:`MAX_TENSORS` tensors (a bound the safetensors library does
not have; docs/FORMAT.md says why): the count is taken from the raw bytes before the
JSON is parsed, so a 100 MB header of a million tiny tensors is refused in milliseconds
instead of costing minutes and gigabytes in every consumer.

:data:`DTYPES` is the one dtype table (safetensors 0.8's: bits per element and the
torch dtype, where torch has one); :func:`torch_shape` is the storage shape torch uses
(``F4`` packs two elements per byte: ``float4_e2m1fn_x2``, last dimension halved).
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, NamedTuple

from weightguard._internal.foundation import boundedjson
from weightguard.errors import FormatError, TruncatedError

__all__ = [
    "DTYPES",
    "DTYPE_BITS",
    "MAX_HEADER_SIZE",
    "MAX_TENSORS",
    "SafetensorsHeader",
    "TensorInfo",
    "parse_header_json",
    "read_safetensors_header",
    "tensor_count_bound",
    "torch_shape",
    "validate_header_dict",
]

# Same bound as the safetensors library (100 MB of JSON).
MAX_HEADER_SIZE = 100_000_000
MAX_RANK = 64

# Tensors one header may name.  The largest published checkpoints keep a few thousand
# tensors per file (sharded); 131,072 leaves a wide margin and bounds the per-tensor
# work of every consumer (docs/FORMAT.md).
MAX_TENSORS = 131_072

# Every dtype safetensors 0.8 reads and writes (its Rust ``Dtype`` enum): bits per
# element and the torch dtype's attribute name (None: torch has no such type).
DTYPES: dict[str, tuple[int, str | None]] = {
    "BOOL": (8, "bool"),
    "F4": (4, "float4_e2m1fn_x2"),  # two per byte; torch's shape halves the last dim
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "C64": (64, "complex64"),
    "F64": (64, "float64"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
}
# Bits per element of every dtype safetensors can write.
DTYPE_BITS: dict[str, int] = {name: bits for name, (bits, _) in DTYPES.items()}
_TENSOR_KEY = b'"data_offsets"'


def torch_shape(dtype: str, shape: tuple[int, ...], *, where: str) -> tuple[int, ...]:
    """The shape torch gives a tensor stored as ``dtype``/``shape`` (as safetensors does:
    ``F4`` is ``float4_e2m1fn_x2``, two elements per item, so the last dimension halves
    and must be even)."""
    if dtype != "F4":
        return shape
    if not shape or shape[-1] % 2:
        raise FormatError(
            f"{where}: an F4 tensor of shape {list(shape)} has no torch form "
            "(float4_e2m1fn_x2 needs an even last dimension)",
            hint="safetensors' own torch loader refuses it too",
        )
    return (*shape[:-1], shape[-1] // 2)


def tensor_count_bound(raw_json: bytes | bytearray | memoryview, *, path: str) -> None:
    """Refuse a header naming more than :data:`MAX_TENSORS` tensors, before parsing it.

    Every tensor entry has a ``"data_offsets"`` key and the pattern cannot occur inside
    another JSON string (its quotes would be escaped), so the count of the pattern is an
    upper bound of the tensors, taken at memory speed."""
    data = raw_json if isinstance(raw_json, bytes | bytearray) else bytes(raw_json)
    n = data.count(_TENSOR_KEY)
    if n > MAX_TENSORS:
        raise FormatError(
            f"{path}: safetensors header names {n} tensors, over the limit of {MAX_TENSORS}",
            hint="split the model into shards (e.g. save_torch_state_dict with "
            "max_shard_size); see docs/FORMAT.md",
        )


class TensorInfo(NamedTuple):  # a tuple: a million are made in a second, not five
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class SafetensorsHeader(NamedTuple):
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


_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


def parse_header_json(
    raw_json: bytes, *, data_size: int | None, path: str
) -> tuple[dict[str, Any], tuple[TensorInfo, ...], dict[str, str] | None, int]:
    """Parse and validate a safetensors JSON header.

    ``data_size``: the data section's size when known (the file's size minus the
    header); the tensors must cover it exactly.  Returns ``(header, tensors sorted by
    offset, metadata, data_size)``.
    """
    tensor_count_bound(raw_json, path=path)
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
    if len(header) > MAX_TENSORS + 1:
        raise FormatError(
            f"{path}: safetensors header names {len(header)} tensors, over the limit of "
            f"{MAX_TENSORS}",
            hint="split the model into shards; see docs/FORMAT.md",
        )
    metadata: dict[str, str] | None = None
    tensors: list[TensorInfo] = []
    append, bits_of, keys = tensors.append, DTYPE_BITS.get, _ENTRY_KEYS
    # One pass, exact type checks (``type(x) is int`` also excludes bool): this loop
    # runs once per tensor of every file, so it stays free of per-element generators.
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise FormatError(f"{path}: __metadata__ must map strings to strings")
            metadata = entry
            continue
        if type(entry) is not dict or entry.keys() != keys:
            raise FormatError(
                f"{path}: tensor {name[:200]!r} must have exactly dtype, shape and data_offsets"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        bits = bits_of(dtype) if type(dtype) is str else None
        if bits is None:
            raise FormatError(
                f"{path}: tensor {name[:200]!r} has unknown dtype {str(dtype)[:40]!r}"
            )
        if type(shape) is not list or len(shape) > MAX_RANK:
            raise FormatError(f"{path}: tensor {name[:200]!r} has an invalid shape")
        count = 1
        for d in shape:
            if type(d) is not int or d < 0:
                raise FormatError(f"{path}: tensor {name[:200]!r} has an invalid shape")
            count *= d
        if type(offsets) is not list or len(offsets) != 2:
            raise FormatError(f"{path}: tensor {name[:200]!r} has invalid data_offsets")
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
            raise FormatError(f"{path}: tensor {name[:200]!r} has invalid data_offsets")
        bits *= count
        if bits % 8 or bits // 8 != end - begin:
            raise FormatError(
                f"{path}: tensor {name[:200]!r}: data_offsets span {end - begin} bytes but "
                f"dtype {dtype} and shape {shape} need {bits / 8:g}"
            )
        append(TensorInfo(name, dtype, tuple(shape), begin, end))
    tensors.sort(key=lambda t: (t.begin, t.end))  # (begin, end): items 3 and 4
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
