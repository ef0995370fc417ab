"""``python -m benchmarks.prefault``: both variants load, the loader is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import models, prefault


def test_prefault_experiment_runs_both_variants_and_restores_the_copier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from weightguard._internal.load.copiers import CpuCopier

    before = CpuCopier.allocate
    model = models.synthetic(4, root=tmp_path)
    assert prefault.main(["--model", str(model), "--reps", "1", "--cold"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{") :])
    assert res["cold"] and res["as_is"]["wall_ms"] > 0 and res["prefault_thread"]["cpu_ms"] > 0
    assert CpuCopier.allocate is before
