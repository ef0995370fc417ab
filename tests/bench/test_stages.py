"""``python -m benchmarks.stages``: runs as documented, every stage timed, nothing left patched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import models, stages
from benchmarks.harness import ROOT, trial_env


def test_stages_cli_times_every_stage_of_a_secure_load(tmp_path: Path) -> None:
    model = models.synthetic(4, root=tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.stages", "--model", str(model), "--loads", "2"],
        cwd=ROOT,
        env=trial_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["tensors"] == len(models.plan_tensors(4))
    calls = res["calls_per_load"]
    for name in (s[2] for s in stages.STAGES):
        if name not in stages.SUBSTAGES:
            assert calls[name] >= 1, (name, calls)
    assert calls["pipeline (per byte)"] == 1 and calls["read + check header"] == 1
    assert calls["(parse artifact header)"] == 1  # an encrypted file's header
    assert calls["audit events"] >= 2  # load.start ... load.ok
    assert 0 < res["outside_pipeline_ms"] < res["load_ms"]
    m = res["machine"]
    assert m["cpu_model"] and m["kernel"] and len(m["loadavg"]) == 3 and m["cores"] >= 1


def test_instrument_restores_the_loader_and_refuses_a_missing_stage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import weightguard.loader as loader
    from weightguard._internal.load.copiers import CpuCopier

    before = (loader.open_file, CpuCopier.__dict__["allocate"])
    with stages.instrument():
        assert loader.open_file is not before[0]
    assert (loader.open_file, CpuCopier.__dict__["allocate"]) == before
    monkeypatch.setattr(stages, "STAGES", (("weightguard.loader", "_gone", "gone"),))
    missing = r"stage 'gone': weightguard\.loader\._gone not found"
    with pytest.raises(LookupError, match=missing), stages.instrument():
        pass
