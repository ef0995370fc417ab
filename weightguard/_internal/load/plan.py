"""Planning a load: which records of which file land where, and tensor views on the result.

Both kinds of file have the same geometry once their head is known:
``record k`` (k >= 1) lives at ``data_base + (k-1) * src_stride`` and holds data-section
bytes ``[(k-1) * chunk, min(k * chunk, data_size))`` (plus a 16-byte tag when encrypted).
A load of a subset of tensors needs only the records their bytes touch; contiguous runs
of records become destination segments (one allocation each).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from weightguard._internal.format.safetensors import DTYPES, TensorInfo, torch_shape
from weightguard._internal.load.pipeline import Record
from weightguard._internal.signing.hashing import SHA256_CHUNKED
from weightguard.errors import DeviceError, FormatError, IntegrityError

__all__ = ["Geometry", "Placement", "build_tensors", "plan", "torch_dtype"]


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Geometry(NamedTuple):
    path: str
    data_base: int  # file offset of record 1
    src_stride: int  # file bytes per full record
    chunk: int  # plaintext bytes per full record
    tag: int  # AEAD tag bytes per record (0 for plaintext)
    data_size: int
    num_chunks: int
    digests: tuple[bytes, ...] | None  # index k -> signed digest of record k (0 = head)
    algorithm: str = SHA256_CHUNKED  # chunk digest algorithm of ``digests``
    # Signed without chunk digests (model_signing): (file offset, length, digest) of each
    # whole-file or shard digest, checked in file order as the records stream by
    # (pipeline.StreamCheck); every record of the file is then read, whatever is wanted.
    units: tuple[tuple[int, int, bytes], ...] | None = None
    unit_algorithm: str = ""  # the OMS hash of ``units`` (see hashing.whole_hasher)

    def span(self, k: int) -> tuple[int, int, int, int]:
        """(src_off, src_len, data_off, data_len) of record ``k`` (1-based)."""
        data_off = (k - 1) * self.chunk
        n = max(0, min(self.chunk, self.data_size - data_off))
        return self.data_base + (k - 1) * self.src_stride, n + self.tag, data_off, n


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Placement(NamedTuple):
    seg: int
    offset: int  # inside the segment
    info: TensorInfo


def plan(
    geo: Geometry, tensors: tuple[TensorInfo, ...], names: set[str] | None, *, align: int = 0
) -> tuple[list[Record], list[int], dict[str, Placement]]:
    """Records to process, segment sizes, and where each wanted tensor's bytes land.

    ``align`` 0 keeps the file's layout in each segment (records land contiguously);
    otherwise every wanted tensor starts at an ``align``-byte offset of its segment and
    each record carries the pieces to copy (:func:`_aligned`).

    A file checked by whole-file or shard digests (``geo.units``) is read whole even for
    a subset: the records no wanted tensor touches are ``hash_only`` (read and hashed,
    never copied anywhere), in file order among the others.
    """
    wanted = [t for t in tensors if names is None or t.name in names]
    hash_only: list[int] = []
    if names is None:
        chunks = list(range(1, geo.num_chunks + 1))
    else:
        needed: set[int] = set()
        for t in wanted:
            if t.end > t.begin:
                needed.update(range(t.begin // geo.chunk + 1, (t.end - 1) // geo.chunk + 2))
        chunks = sorted(needed)
        if geo.units is not None:
            hash_only = [k for k in range(1, geo.num_chunks + 1) if k not in needed]
    # Contiguous runs of chunks -> segments.
    runs: list[list[int]] = []
    for k in chunks:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    records: list[Record] = []
    segments: list[int] = []
    seg_ranges: list[tuple[int, int]] = []
    for seg, run in enumerate(runs):
        start = geo.span(run[0])[2]
        end = start
        for k in run:
            src_off, src_len, data_off, n = geo.span(k)
            digest = None
            if geo.digests is not None:
                if k >= len(geo.digests):
                    raise IntegrityError(
                        "the signature has no digest for this chunk", path=geo.path, chunk=k
                    )
                digest = geo.digests[k]
            records.append(Record(k, src_off, src_len, seg, data_off - start, n, digest))
            end = data_off + n
        segments.append(end - start)
        seg_ranges.append((start, end))
    for k in hash_only:
        src_off, src_len, _, _ = geo.span(k)
        records.append(Record(k, src_off, src_len, -1, 0, 0, None, hash_only=True))
    if hash_only:
        records.sort(key=lambda r: r.index)
    placements: dict[str, Placement] = {}
    for t in wanted:
        if t.end == t.begin:
            placements[t.name] = Placement(-1, 0, t)
            continue
        for seg, (s, e) in enumerate(seg_ranges):
            if s <= t.begin and t.end <= e:
                placements[t.name] = Placement(seg, t.begin - s, t)
                break
        else:  # pragma: no cover - planning invariant
            raise FormatError(f"{geo.path}: tensor {t.name!r} is outside the planned chunks")
    if align:
        return _aligned(geo, records, seg_ranges, placements, align)
    return records, segments, placements


def _aligned(
    geo: Geometry,
    records: list[Record],
    seg_ranges: list[tuple[int, int]],
    placements: dict[str, Placement],
    align: int,
) -> tuple[list[Record], list[int], dict[str, Placement]]:
    """Re-lay each segment so every tensor starts at an ``align``-byte offset.

    Device kernels (cuBLASLt fp8, vectorised loads) need aligned pointers; the file's
    offsets are only aligned to whatever its writer chose.  Bytes of a record outside
    every wanted tensor are not copied; the gaps are zeroed by the copier.
    """
    by_seg: dict[int, list[Placement]] = {}
    for p in placements.values():
        if p.seg >= 0:
            by_seg.setdefault(p.seg, []).append(p)
    new_place: dict[str, Placement] = {}
    sizes: list[int] = []
    for seg in range(len(seg_ranges)):
        cur = 0
        for p in sorted(by_seg.get(seg, []), key=lambda q: q.info.begin):
            cur = (cur + align - 1) // align * align
            new_place[p.info.name] = Placement(seg, cur, p.info)
            cur += p.info.nbytes
        sizes.append(max(cur, 1))
    for name, p in placements.items():
        if p.seg < 0:
            new_place[name] = p
    out: list[Record] = []
    for r in records:
        if r.hash_only:
            out.append(r)
            continue
        d0 = seg_ranges[r.seg][0] + r.dst_off  # data-section offset of the record
        d1 = d0 + r.dst_len
        pieces = []
        for p in sorted(by_seg.get(r.seg, []), key=lambda q: q.info.begin):
            b, e = max(p.info.begin, d0), min(p.info.end, d1)
            if b < e:
                dst = new_place[p.info.name].offset + b - p.info.begin
                pieces.append((b - d0, dst, e - b))
        out.append(replace(r, pieces=tuple(pieces)))
    del geo
    return out, sizes, new_place


def torch_dtype(name: str, *, path: str, tensor: str) -> Any:
    """The torch dtype of safetensors dtype ``name`` (the one table: format.safetensors)."""
    import torch

    attr = DTYPES[name][1] if name in DTYPES else None
    dt = getattr(torch, attr, None) if attr else None
    if dt is None:
        raise FormatError(
            f"{path}: tensor {tensor!r} has dtype {name}, which this torch cannot represent",
            hint="upgrade torch, or load the file with a tool that supports the dtype",
        )
    return dt


def build_tensors(
    path: str, segs: list[Any], placements: dict[str, Placement], device: str
) -> dict[str, Any]:
    """dtype/shape views of the segment buffers (copies for misaligned offsets).

    In bulk: dtypes, item sizes, segment addresses and each segment's view as a dtype
    are looked up once, not per tensor (per-tensor torch calls were ~10 ms of a
    769-tensor load's fixed cost); a tensor is then one ``as_strided`` of its
    segment's dtype view (contiguous strides), the same storage, offset, shape and
    strides as slicing the bytes and viewing them (three torch calls: ~4x the time).
    """
    import torch

    out: dict[str, Any] = {}
    dtypes: dict[str, tuple[Any, int]] = {}
    bases: dict[int, tuple[int, int, int]] = {}  # seg -> (address, storage offset, bytes)
    views: dict[tuple[int, Any], Any] = {}  # (seg, dtype) -> the segment as that dtype
    strides_of: dict[tuple[int, ...], tuple[int, ...]] = {}
    as_strided = torch.as_strided
    for name, p in placements.items():
        info = p.info
        known = dtypes.get(info.dtype)
        if known is None:
            dt = torch_dtype(info.dtype, path=path, tensor=name)
            known = dtypes[info.dtype] = (dt, dt.itemsize)
        dt, itemsize = known
        shape = (  # F4: two per byte, last dim halved (format.safetensors.torch_shape)
            info.shape
            if info.dtype != "F4"
            else torch_shape(info.dtype, info.shape, where=f"{path}: tensor {name!r}")
        )
        if p.seg < 0:
            out[name] = torch.empty(shape, dtype=dt, device=device)
            continue
        seg = segs[p.seg]
        base = bases.get(p.seg)
        if base is None:
            base = bases[p.seg] = (seg.data_ptr(), seg.storage_offset(), seg.numel())
        ptr, seg_offset, seg_bytes = base
        if p.offset + info.nbytes > seg_bytes:
            raise FormatError(f"{path}: tensor {name!r} does not lie inside its buffer")
        if (ptr + p.offset) % itemsize or (seg_offset + p.offset) % itemsize:
            raw = seg[p.offset : p.offset + info.nbytes]
            try:
                aligned = torch.empty(info.nbytes, dtype=torch.uint8, device=raw.device)
            except (RuntimeError, MemoryError) as exc:
                raise DeviceError(
                    f"out of memory on {raw.device} allocating {info.nbytes} bytes for "
                    f"tensor {name!r} of {path}",
                    hint="free memory, or load fewer tensors (open_model(...).load(names))",
                ) from exc
            aligned.copy_(raw)
            raw.zero_()  # no second plaintext copy left behind in the segment buffer
            out[name] = aligned.view(dt).view(shape)
            continue
        if seg_offset % itemsize:  # the segment itself cannot be viewed as the dtype
            out[name] = seg[p.offset : p.offset + info.nbytes].view(dt).view(shape)
            continue
        typed = views.get((p.seg, dt))
        if typed is None:
            typed = views[(p.seg, dt)] = seg[: seg_bytes - seg_bytes % itemsize].view(dt)
        strides = strides_of.get(shape)
        if strides is None:
            strides = strides_of[shape] = _contiguous_strides(shape)
        out[name] = as_strided(typed, shape, strides, (seg_offset + p.offset) // itemsize)
    return out


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape`` (in elements), as torch gives them."""
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * max(shape[d + 1], 1)
    return tuple(strides)
