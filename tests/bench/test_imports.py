"""``python -m benchmarks.imports``: the loader's import cost above torch + safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import imports, models

_STDERR = """import time: self [us] | cumulative | imported package
import time:       500 |       9000 | torch
import time:       100 |        100 | safetensors.torch
import time:       100 |        200 |     weightguard.errors
import time:      3000 |       4000 |   weightguard._internal.signing.oms
import time:      1000 |       1000 |   cryptography.exceptions
import time:      2000 |       7000 | weightguard.loader
import time:      1000 |       1000 | blake3
"""


def test_importtime_is_charged_to_the_top_level_import_and_its_children() -> None:
    got = imports.parse_importtime(_STDERR)
    assert got == {
        "(total)": 8.0,
        "weightguard.loader": 7.0,
        "weightguard.loader <- weightguard._internal.signing.oms": 4.0,
        "weightguard.loader <- cryptography.exceptions": 1.0,
        "blake3": 1.0,
    }


def test_rows_after_the_loads_marker_are_the_first_loads_not_the_imports() -> None:
    stderr = (
        _STDERR
        + imports._LOADS_MARKER
        + "\nimport time:       300 |        300 |   cryptography.hazmat._oid\n"
        + "import time:       900 |       1200 | cryptography.hazmat.primitives.serialization\n"
    )
    assert imports.parse_importtime(stderr) == imports.parse_importtime(_STDERR)
    assert imports.first_load_imports(stderr) == ["cryptography.hazmat.primitives.serialization"]
    assert imports.first_load_imports(_STDERR) == []


def test_imports_benchmark_reports_import_and_first_load(tmp_path: Path) -> None:
    model = models.synthetic(4, root=tmp_path)
    out = tmp_path / "r.json"
    base = tmp_path / "before"  # another copy of the package (here: this one), timed alternating
    base.mkdir()
    (base / "weightguard").symlink_to(Path(imports.ROOT) / "weightguard")
    argv = ["--reps", "1", "--model", str(model), "--out", str(out), "--baseline", str(base)]
    assert imports.main(argv) == 0
    res = json.loads(out.read_text())
    assert len(res["trials"]["baseline"]) == 1 and res["baseline"]["dir"] == str(base)
    assert res["baseline"]["weightguard_loader_import_cpu_ms"] > 0
    assert res["baseline"]["dataclasses_created"] == res["dataclasses_created"]
    assert res["tensors"] == len(models.plan_tensors(4))
    assert res["weightguard_loader_import_ms"] > 0 and res["weightguard_loader_import_cpu_ms"] > 0
    assert res["first_load_ms"] > 0 and res["second_load_ms"] > 0
    assert res["dataclasses_created"] > 10 and res["dataclasses_cpu_ms"] > 0
    assert res["verdict"] in ("pass", "miss") and res["goal_ms"] == 30.0
    assert res["importtime_top_ms"]["(total)"] > 0
    # importlib.import_module's imports (the package's __getattr__) are in the tree too
    assert res["importtime_top_ms"]["weightguard.loader"] > 0
    assert "weightguard.manifest" in res["dataclasses_by_module"]
    assert not any(m.startswith("weightguard") for m in res["first_load_imports"])
    assert len(res["machine"]["loadavg"]) == 3


def test_a_baseline_without_a_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no weightguard package there"):
        imports.main(["--reps", "1", "--baseline", str(tmp_path)])
