"""``python -m benchmarks.imports``: the loader's import cost above torch + safetensors."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_imports_benchmark_reports_import_and_first_load(tmp_path: Path) -> None:
    model = models.synthetic(4, root=tmp_path)
    out = tmp_path / "r.json"
    assert imports.main(["--reps", "1", "--model", str(model), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tensors"] == len(models.plan_tensors(4))
    assert res["weightguard_loader_import_ms"] > 0 and res["weightguard_loader_import_cpu_ms"] > 0
    assert res["first_load_ms"] > 0 and res["second_load_ms"] > 0
    assert res["dataclasses_created"] > 10 and res["dataclasses_cpu_ms"] > 0
    assert res["verdict"] in ("pass", "miss") and res["goal_ms"] == 30.0
    assert res["importtime_top_ms"]["(total)"] > 0
    assert len(res["machine"]["loadavg"]) == 3
