"""Tensor sources for the watermark (dict, safetensors file, directory of shards) and
streaming, atomic rewriting of safetensors files with the same header bytes.

A source lists names, dtypes and shapes up front (headers only) and loads one tensor at
a time, so memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from weightguard._internal.format.model_dir import is_weight_file
from weightguard._internal.format.safetensors import MAX_HEADER_SIZE, tensor_count_bound
from weightguard._internal.foundation import boundedjson
from weightguard._internal.foundation.atomic import atomic_write
from weightguard.errors import DestinationError, FormatError, SourceError, WatermarkError

if TYPE_CHECKING:  # pragma: no cover
    import torch

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def torch_dtype(st: str) -> torch.dtype:
    import torch

    table = {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
        "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
        "F32": torch.float32, "F64": torch.float64,
    }  # fmt: skip
    if st not in table:
        raise WatermarkError(
            f"dtype {st} is not supported by the watermark tools",
            hint="cast the tensor to F16, BF16 or F32",
        )
    return table[st]


def st_dtype(dt: torch.dtype) -> str:
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
        torch.int32: "I32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.float32: "F32", torch.float64: "F64",
    }  # fmt: skip
    if dt not in table:
        raise WatermarkError(
            f"tensor dtype {dt} is not supported by the watermark tools",
            hint="cast the tensor to float16, bfloat16 or float32",
        )
    return table[dt]


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path | None = None
    start: int = 0  # absolute file offsets
    end: int = 0


@dataclass(frozen=True)
class StHeader:
    raw: bytes  # 8-byte length + JSON, exactly as stored
    entries: list[Entry]  # in header order
    data_start: int
    file_size: int


def read_st_header(f: BinaryIO, path: Path) -> StHeader:
    """Bounded parse of a plain safetensors header."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise FormatError(f"{path}: too short to be a safetensors file")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_SIZE or n + 8 > size:
        raise FormatError(
            f"{path}: safetensors header length {n} is out of bounds (file has {size} bytes)",
            hint="the file is not a plain safetensors file (encrypted artifact? corrupt?)",
        )
    raw_json = f.read(n)
    tensor_count_bound(raw_json, path=str(path))  # the loader's bound, before parsing
    doc = boundedjson.loads(
        raw_json, what=f"{path}: safetensors header", max_bytes=MAX_HEADER_SIZE, max_depth=4
    )
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    data_start = 8 + n
    data_size = size - data_start
    entries = []
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            s, e = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: malformed header entry for tensor {name!r}") from None
        if dtype not in ITEMSIZE or any(d < 0 for d in shape):
            raise FormatError(f"{path}: tensor {name!r} has unknown dtype or negative shape")
        count = 1
        for d in shape:
            count *= d
        if not (0 <= s <= e <= data_size) or e - s != count * ITEMSIZE[dtype]:
            raise FormatError(f"{path}: tensor {name!r} has data offsets out of bounds")
        entries.append(Entry(name, dtype, shape, path, data_start + s, data_start + e))
    return StHeader(head + raw_json, entries, data_start, size)


def tensor_from_bytes(data: bytes | bytearray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    tdt = torch_dtype(dtype)
    if len(data) == 0:
        return torch.empty(shape, dtype=tdt)
    return torch.frombuffer(bytearray(data), dtype=tdt).reshape(shape)


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return bytes(flat.view(torch.uint8).numpy().tobytes())


class TensorSource:
    """Names/dtypes/shapes up front; `load(name)` reads one tensor."""

    def __init__(
        self, entries: list[Entry], loader: Callable[[Entry], torch.Tensor], label: str
    ) -> None:
        self.entries: dict[str, Entry] = {}
        for e in entries:
            if e.name in self.entries:
                raise WatermarkError(
                    f"{label}: tensor {e.name!r} appears more than once",
                    hint="a model must name each tensor once",
                )
            self.entries[e.name] = e
        self._loader = loader
        self.label = label

    def load(self, name: str) -> torch.Tensor:
        return self._loader(self.entries[name])

    def __repr__(self) -> str:
        return f"TensorSource({self.label!r}, {len(self.entries)} tensors)"


def _file_loader(e: Entry) -> torch.Tensor:
    assert e.file is not None
    try:
        with open(e.file, "rb") as f:
            f.seek(e.start)
            data = f.read(e.end - e.start)
    except OSError as exc:
        raise SourceError(f"cannot read tensor {e.name!r} from {e.file}: {exc.strerror}") from None
    if len(data) != e.end - e.start:
        raise FormatError(f"{e.file}: file ended inside tensor {e.name!r}")
    return tensor_from_bytes(data, e.dtype, e.shape)


def shard_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if is_weight_file(p.name) and p.is_file())
    if not files:
        raise WatermarkError(
            f"{directory}: no .safetensors files found",
            hint="pass a safetensors file or a model directory holding shards",
        )
    return files


def _file_entries(path: Path) -> list[Entry]:
    try:
        with open(path, "rb") as f:
            return read_st_header(f, path).entries
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None


def _is_encrypted(path: Path) -> bool:
    """True when the file is a weightguard encrypted artifact (not plain safetensors)."""
    from weightguard._internal.format import layout as fmt

    try:
        with open(path, "rb") as f:
            return fmt.is_artifact(f.read(fmt.MAGIC_PROBE))
    except OSError:
        return False


# ``load_encrypted(path, options) -> dict of tensors``: the secure loader, handed down by
# the orchestration layer (weightguard.watermark) so this module never imports it.
LoadEncrypted = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]


def open_source(
    obj: Any,
    *,
    label: str | None = None,
    load_options: Mapping[str, Any] | None = None,
    load_encrypted: LoadEncrypted | None = None,
) -> TensorSource:
    """A dict of tensors, a safetensors file, a directory of shards, or an encrypted artifact
    (decrypted in memory through ``load_encrypted``, options passed through)."""
    if isinstance(obj, TensorSource):
        return obj
    if isinstance(obj, Mapping):
        return _dict_source(obj, label or "tensors")
    path = Path(os.fspath(obj))
    if path.is_dir():
        shards = shard_files(path)
        if any(_is_encrypted(p) for p in shards):
            return _encrypted_source(path, label or str(path), load_options, load_encrypted)
        entries: list[Entry] = []
        for p in shards:
            entries.extend(_file_entries(p))
        return TensorSource(entries, _file_loader, label or str(path))
    if path.is_file():
        if _is_encrypted(path):
            return _encrypted_source(path, label or str(path), load_options, load_encrypted)
        return TensorSource(_file_entries(path), _file_loader, label or str(path))
    raise SourceError(
        f"{path}: no such file or directory",
        hint="pass a safetensors file, a model directory or an artifact",
    )


def _dict_source(d: Mapping[str, Any], label: str) -> TensorSource:
    import numpy as np
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise WatermarkError(
                f"{label}: value for {k!r} is not a tensor", hint="pass a dict of torch tensors"
            )
        tensors[str(k)] = v
    entries = [Entry(k, st_dtype(v.dtype), tuple(v.shape)) for k, v in tensors.items()]
    return TensorSource(entries, lambda e: tensors[e.name].detach().cpu(), label)


def _encrypted_source(
    path: Path,
    label: str,
    options: Mapping[str, Any] | None,
    load_encrypted: LoadEncrypted | None,
) -> TensorSource:
    opts = dict(options or {})
    if "policy" not in opts:
        raise WatermarkError(
            f"{path} is an encrypted artifact: the secure loader needs a verification policy",
            hint="give the secure loader a verification policy (--trust-key, --signature), "
            "or check tensors you loaded yourself",
        )
    if load_encrypted is None:
        raise WatermarkError(
            f"{path} is an encrypted artifact and the secure loader is not available",
            hint="decrypt it first, or check the loaded tensors",
        )
    return _dict_source(load_encrypted(str(path), opts), label)


# ---------------------------------------------------------------- atomic writing


@contextlib.contextmanager
def atomic_file(dst: Path) -> Iterator[BinaryIO]:
    """The one atomic-write rule (foundation.atomic), mode 0600: marked weights are
    plaintext weights."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst, mode=0o600) as f:
        yield f


def write_json_atomic(dst: Path, doc: Mapping[str, Any]) -> None:
    try:
        with atomic_file(dst) as f:
            f.write((json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise DestinationError(f"cannot write {dst}: {exc.strerror}") from None


def rewrite_file(
    src: Path, dst: Path, transform: Callable[[Entry, torch.Tensor], torch.Tensor | None]
) -> int:
    """Copy a safetensors file with identical header bytes; `transform(entry, tensor)` may
    return a replacement tensor (same dtype and shape) or None to keep the bytes.  Streams
    one tensor at a time.  Returns the number of tensors replaced."""
    replaced = 0
    try:
        with open(src, "rb") as fin:
            hdr = read_st_header(fin, src)
            with atomic_file(dst) as fout:
                fout.write(hdr.raw)
                pos = hdr.data_start
                for e in sorted(hdr.entries, key=lambda x: (x.start, x.end)):
                    if e.start < pos:  # overlapping entries: refuse rather than guess
                        raise FormatError(f"{src}: tensor {e.name!r} overlaps another tensor")
                    fin.seek(pos)
                    _copy(fin, fout, e.start - pos)
                    fin.seek(e.start)
                    data = fin.read(e.end - e.start)
                    if len(data) != e.end - e.start:
                        raise FormatError(f"{src}: file ended inside tensor {e.name!r}")
                    new = transform(e, tensor_from_bytes(data, e.dtype, e.shape))
                    if new is None:
                        fout.write(data)
                    else:
                        out = tensor_to_bytes(new)
                        if len(out) != len(data):
                            raise WatermarkError(f"internal: tensor {e.name!r} changed size")
                        fout.write(out)
                        replaced += 1
                    pos = e.end
                fin.seek(pos)
                _copy(fin, fout, hdr.file_size - pos)
    except OSError as exc:
        raise DestinationError(f"cannot write {dst}: {exc.strerror}") from None
    return replaced


def _copy(fin: BinaryIO, fout: BinaryIO, n: int) -> None:
    while n > 0:
        buf = fin.read(min(n, 1 << 20))
        if not buf:
            raise FormatError("file ended early while copying")
        fout.write(buf)
        n -= len(buf)


def copy_tree_files(src: Path, tmp_dst: Path) -> list[tuple[Path, Path]]:
    """Copy every non-safetensors file byte for byte; return (src, dst) shard pairs."""
    shards = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        q = tmp_dst / rel
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
        elif is_weight_file(p.name):
            shards.append((p, q))
        elif p.is_file():
            q.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, q)
    return shards
