"""Helpers shared by the format tests (no tests here)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from weightguard._internal.format.layout import MAGIC

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "BOOL": 1, "I64": 8, "I32": 4}


def build_safetensors(
    tensors: dict[str, tuple[str, list[int], bytes]],
    metadata: dict[str, str] | None = None,
    *,
    pad: bool = True,
) -> bytes:
    """A safetensors file laid out like the reference writer (tensors in given order)."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def raw_header(data: bytes) -> tuple[int, bytes, int]:
    """(length, header JSON bytes, offset of the MAC) of an artifact's bytes."""
    m = len(MAGIC)
    assert data[:m] == MAGIC
    (n,) = struct.unpack("<I", data[m : m + 4])
    return n, data[m + 4 : m + 4 + n], m + 4 + n


def replace_header(data: bytes, new_json: bytes) -> bytes:
    """Artifact bytes with the header JSON replaced (length updated, MAC kept)."""
    _n, _, mac_at = raw_header(data)
    return data[: len(MAGIC)] + struct.pack("<I", len(new_json)) + new_json + data[mac_at:]


def key_uri(path: Path) -> str:
    return f"file://{path}"
