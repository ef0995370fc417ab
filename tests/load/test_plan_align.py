"""The aligned placement of the device path (load_plan.plan(..., align=N)), as a property:
every wanted tensor lands at an aligned offset, the records' pieces cover its bytes
exactly once from the right place, and nothing overlaps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from weightguard._internal.format.safetensors import TensorInfo
from weightguard._internal.load.plan import Geometry, plan


@st.composite
def layouts(draw):  # type: ignore[no-untyped-def]
    sizes = draw(st.lists(st.integers(0, 700), min_size=1, max_size=12))
    chunk = draw(st.integers(16, 1024))
    names = [f"t{i}" for i in range(len(sizes))]
    wanted = draw(st.sets(st.sampled_from(names))) if draw(st.booleans()) else None
    return sizes, chunk, wanted, draw(st.sampled_from([64, 256]))


def _tensors(sizes: list[int]) -> tuple[TensorInfo, ...]:
    out, off = [], 0
    for i, n in enumerate(sizes):
        out.append(TensorInfo(f"t{i}", "U8", (n,), off, off + n))
        off += n
    return tuple(out)


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_aligned_plan_covers_every_byte_once(case) -> None:  # type: ignore[no-untyped-def]
    sizes, chunk, wanted, align = case
    tensors = _tensors(sizes)
    data = sum(sizes)
    n = max(1, -(-data // chunk))
    geo = Geometry("m", 100, chunk + 16, chunk, 16, data, n, None)
    records, segments, place = plan(geo, tensors, wanted, align=align)
    _, _, flat = plan(geo, tensors, wanted)
    assert set(place) == set(flat)
    filled: dict[int, list[int]] = {s: [0] * size for s, size in enumerate(segments)}
    for r in records:
        d0 = (r.index - 1) * chunk
        for so, do, ln in r.pieces:
            assert so >= 0 and so + ln <= r.dst_len
            for k in range(ln):
                filled[r.seg][do + k] += 1
                # the byte at segment offset do+k is data byte d0+so+k of one tensor
                t = next(
                    p
                    for p in place.values()
                    if p.seg == r.seg and p.offset <= do + k < p.offset + p.info.nbytes
                )
                assert t.info.begin + (do + k - t.offset) == d0 + so + k
    for name, p in place.items():
        if p.info.nbytes == 0:
            continue
        assert p.offset % align == 0, name
        assert filled[p.seg][p.offset : p.offset + p.info.nbytes] == [1] * p.info.nbytes
    # nothing but tensor bytes is written (gaps stay as the copier zeroed them)
    written = sum(sum(v) for v in filled.values())
    assert written == sum(p.info.nbytes for p in place.values() if p.seg >= 0)
