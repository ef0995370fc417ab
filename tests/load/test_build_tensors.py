"""build_tensors: each tensor one ``as_strided`` of its segment's dtype view, the same
tensor as slicing the bytes and viewing them (storage, offset, shape, strides, values);
misaligned offsets still copied (and the segment's bytes zeroed), a placement outside
its buffer refused."""

from __future__ import annotations

import math

import pytest
import torch

from weightguard._internal.format.safetensors import TensorInfo
from weightguard._internal.load.plan import Placement, build_tensors
from weightguard.errors import FormatError

ITEM = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1}
TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "I64": torch.int64, "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip


def _place(
    specs: list[tuple[str, str, tuple[int, ...], int]], seg: int = 0
) -> dict[str, Placement]:
    out = {}
    for name, dtype, shape, offset in specs:
        n = ITEM[dtype] * math.prod(shape)
        out[name] = Placement(seg, offset, TensorInfo(name, dtype, shape, offset, offset + n))
    return out


def _reference(seg: torch.Tensor, p: Placement) -> torch.Tensor:
    raw = seg[p.offset : p.offset + p.info.nbytes]
    return raw.view(TORCH[p.info.dtype]).view(p.info.shape)


SPECS = [
    ("a", "F32", (3, 4), 0),
    ("b", "F16", (5,), 48),
    ("c", "I64", (2, 0, 3), 64),  # empty
    ("d", "BF16", (1, 7, 1), 64),
    ("e", "U8", (3,), 78),
    ("f", "F32", (), 84),  # a scalar
    ("g", "I64", (4, 2), 88),
    ("h", "BOOL", (0,), 152),  # empty at the very end
]


@pytest.mark.parametrize("start", [0, 8, 16])
def test_views_are_the_sliced_views(start: int) -> None:
    whole = torch.arange(256, dtype=torch.uint8)
    seg = whole[start : start + 152]  # a segment that is itself a view at an offset
    place = _place(SPECS)
    want = {k: _reference(seg, p) for k, p in place.items()}
    got = build_tensors("m", [seg], place, "cpu")
    assert got.keys() == want.keys()
    for k, t in got.items():
        w = want[k]
        assert t.dtype == w.dtype and t.shape == w.shape and t.stride() == w.stride(), k
        assert t.storage_offset() == w.storage_offset() and t.data_ptr() == w.data_ptr(), k
        assert t.untyped_storage().data_ptr() == seg.untyped_storage().data_ptr(), k
        assert t.is_contiguous() and torch.equal(t, w), k


def test_a_segment_at_an_odd_offset_still_gives_the_sliced_views() -> None:
    whole = torch.arange(256, dtype=torch.uint8)
    seg = whole[2:154]  # storage offset 2: not a multiple of 4 or 8
    place = _place([("a", "F16", (3,), 0), ("b", "F32", (2,), 2), ("c", "I64", (1,), 6)])
    got = build_tensors("m", [seg], place, "cpu")
    for k, p in place.items():
        w = _reference(seg, p)
        assert got[k].data_ptr() == w.data_ptr() and torch.equal(got[k], w), k


def test_misaligned_tensors_are_copied_and_their_bytes_zeroed() -> None:
    seg = torch.arange(64, dtype=torch.uint8)
    place = _place([("x", "F32", (2,), 1)])
    expect = seg[1:9].clone().view(torch.float32)
    got = build_tensors("m", [seg], place, "cpu")
    assert got["x"].data_ptr() % 4 == 0 and torch.equal(got["x"], expect)
    assert got["x"].untyped_storage().data_ptr() != seg.untyped_storage().data_ptr()
    assert not seg[1:9].any()


def test_a_placement_outside_its_buffer_is_refused() -> None:
    seg = torch.zeros(16, dtype=torch.uint8)
    with pytest.raises(FormatError, match="does not lie inside its buffer"):
        build_tensors("m", [seg], _place([("x", "F32", (5,), 0)]), "cpu")
