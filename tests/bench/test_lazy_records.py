"""benchmarks/lazy.py's record-size options: variant names and the tensor-parallel arithmetic."""

from __future__ import annotations

import pytest

from benchmarks import lazy


def test_variant_kind_strips_the_record_size() -> None:
    assert lazy._kind("weightguard:full@1") == "full"
    assert lazy._kind("weightguard:load_file") == "load_file"
    assert lazy._kind("safetensors:one") == "one"


@pytest.mark.parametrize(("mib", "measured"), [(1, 0.535), (2, 0.582), (4, 0.658), (8, 0.722)])
def test_layout_arithmetic_matches_the_reader(mib: int, measured: float) -> None:
    # the fractions the decrypting reader measured on the benchmark's model
    # (benchmarks/results/lazy-20261205T234443Z.json, tp4_records)
    got = lazy.records_needed(lazy.llama_shapes(lazy.LLAMA), 4, mib << 20)
    assert round(got, 3) == measured


def test_real_shapes_report_each_size() -> None:
    out = lazy.tp_real_shapes([1, 4])
    assert set(out) == {"Llama-3.2-1B tp4", "Llama-3-8B tp4", "Llama-3-70B tp4", "Llama-3-70B tp8"}
    for fractions in out.values():
        assert 0.25 < fractions["1"] <= fractions["4"] < 1.0
