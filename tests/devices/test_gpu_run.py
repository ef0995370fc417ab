"""The prepared GPU run (benchmarks/gpu.sh, benchmarks/gpu_checks.py) works before any
GPU time is spent on it: its wheel selection and pip-less install, and the whole
``gpu.sh dry-run`` (fake device, Triton's interpreter, the same JSON) in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_checks as g

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "py", "fits"),
    [
        ("cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl", (3, 12), True),
        ("cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl", (3, 10), False),
        ("cffi-2.1.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", (3, 12), True),
        ("cffi-2.1.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", (3, 13), False),
        ("pycparser-3.12-py3-none-any.whl", (3, 11), True),
        ("blake3-1.0.11-cp313-cp313-manylinux_2_17_aarch64.whl", (3, 13), False),
    ],
)
def test_wheel_selection(name: str, py: tuple[int, int], fits: bool) -> None:
    assert g.wheel_fits(name, py) is fits


def test_install_without_pip_unpacks_the_fitting_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    me = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    for tag, value in ((f"{me}-{me}-manylinux_2_17_x86_64", "right"), ("cp39-cp39-any", "wrong")):
        with zipfile.ZipFile(wheels / f"wgdemo-1.0-{tag}.whl", "w") as z:
            z.writestr("wgdemo/__init__.py", f"WHICH = {value!r}\n")
            z.writestr("wgdemo-1.0.dist-info/METADATA", "Name: wgdemo\nVersion: 1.0\n")
    monkeypatch.setattr(g, "_missing_dists", lambda: ["wgdemo"])
    site = tmp_path / "site"
    res = g.install(wheels, site, use_pip=False)
    assert res["via"] == "unzip" and res["installed"] == [
        f"wgdemo-1.0-{me}-{me}-manylinux_2_17_x86_64.whl"
    ]
    out = subprocess.run(
        [sys.executable, "-c", "import wgdemo; print(wgdemo.WHICH)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "right"
    monkeypatch.setattr(g, "_missing_dists", lambda: ["absent"])
    with pytest.raises(RuntimeError, match="no wheel of absent for cp"):
        g.install(wheels, tmp_path / "site2", use_pip=False)


def test_env_verdict_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    res = g.env_check(dry=True)
    assert "a C compiler (cc/gcc/clang or $CC): Triton builds its launcher" in res["missing"]
    assert res["python"] == sys.version.split()[0]


@pytest.mark.slow
def test_gpu_sh_dry_run_green_in_under_3_minutes(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    t = time.monotonic()
    p = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "dry-run"],
        cwd=ROOT,
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=200,
    )
    took = time.monotonic() - t
    doc = json.loads((tmp_path / "result.json").read_text())
    assert p.returncode == 0, (doc["verdict"], p.stdout[-2000:], p.stderr[-2000:])
    assert doc["schema"] == "weightguard-gpu-run/1" and doc["mode"] == "dry-run"
    assert doc["verdict"] == "ok"
    assert list(doc["steps"]) == [name for name, _, _ in g.STEPS]
    assert all(s["status"] == "ok" for s in doc["steps"].values()), doc["steps"]
    steps = doc["steps"]
    assert steps["kernel_fips197"]["result"]["ok"] is True
    assert steps["kernel"]["result"]["all_correct"] is True
    assert {v["tables"] for v in steps["kernel"]["result"]["variants"]} == set(("shared", "global"))
    probes = steps["probes"]["result"]
    assert probes["u8_3_bytes"] == {"ok": True, "aligned_256": True}
    assert probes["gemm"]["ok"] is True
    assert probes["load_ok_extra"][0]["decrypt_on"] == "gpu"
    for size in ("load_1g", "load_8g"):
        r = steps[size]["result"]
        assert r["checksums_equal"] is True
        assert r["gpu"]["load_ok_extra"]["decrypt_on"] == "gpu"
        assert r["gpu"]["peak_growth"] >= 0
    assert took < 180, f"dry-run took {took:.0f} s"
