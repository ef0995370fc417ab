"""The benchmark harness itself: generator output, subprocess trials, goals, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import models, report
from benchmarks.harness import (
    Case,
    Goal,
    Variant,
    _all_ratios,
    _placeholders,
    evaluate_goal,
    evict,
    realtime_ok,
    run_case,
    run_trial,
    trial_env,
)


def test_plan_has_hundreds_of_mixed_odd_tensors() -> None:
    tensors = models.plan_tensors(256)
    total = sum(t.nbytes for t in tensors)
    assert 0.9 * 256 * 2**20 < total <= 256 * 2**20
    assert len(tensors) >= 200
    assert {t.dtype for t in tensors} == {"BF16", "F16", "F32"}
    assert any(any(d % 8 for d in t.shape) for t in tensors if len(t.shape) == 2)


def test_generated_file_is_valid_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    specs = [
        models.TensorSpec("a", "BF16", (3, 5)),
        models.TensorSpec("b", "F16", (7,)),
        models.TensorSpec("c", "F32", (2, 3, 4)),
    ]
    path = tmp_path / "m.safetensors"
    models.write_safetensors(path, specs, models._Pool(1, n=1000), {"format": "pt"})
    with safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == ["a", "b", "c"]
        a = f.get_tensor("a")
        assert str(a.dtype) == "torch.bfloat16" and tuple(a.shape) == (3, 5)
        c = f.get_tensor("c").numpy()
        assert c.shape == (2, 3, 4) and 0.0 < float(np.std(c)) < 0.1  # realistic values
        assert f.metadata() == {"format": "pt"}


def test_sharded_model_has_consistent_index(tmp_path: Path) -> None:
    d = models.synthetic(8, shards=4, root=tmp_path)
    files = models.weight_files(d)
    assert len(files) == 4
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert not any(p.name.startswith(".") for p in d.iterdir())  # stamp lives outside
    assert models.synthetic(8, shards=4, root=tmp_path) == d  # reused, not regenerated


def test_trial_runs_in_subprocess_and_reports_rusage(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"\1" * (3 << 20))
    v = Variant("read", "anchor", "benchmarks.ops:read_file", {"model": str(f)})
    res = run_trial(v, 60, tmp_path)
    assert res["status"] == "ok", res
    assert res["bytes"] == 3 << 20
    assert res["wall_s"] > 0 and res["cpu_s"] >= 0 and res["peak_rss_mib"] > 1


def test_unavailable_and_broken_ops_are_reported(tmp_path: Path) -> None:
    missing = Variant("x", "weightguard", "benchmarks.wg_ops:audit_verify", {"log": ""})
    res = run_trial(missing, 60, tmp_path)
    assert res["status"] == "unavailable" and "not prepared" in res["reason"]
    broken = Variant("y", "anchor", "benchmarks.ops:read_file", {"model": "/nonexistent"})
    res = run_trial(broken, 60, tmp_path)
    assert res["status"] == "error" and "FileNotFoundError" in res["reason"]


def test_case_alternates_and_judges_goals(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"\2" * (1 << 20))
    evict([f])  # fadvise works unprivileged
    case = Case(
        name="t",
        title="t",
        group="t",
        data_bytes=1 << 20,
        inputs=[str(f)],
        reps=2,
        caches=("cold",),
        variants=[
            Variant("a", "anchor", "benchmarks.ops:read_file", {"model": str(f)}),
            Variant("w", "weightguard", "benchmarks.ops:read_file", {"model": str(f)}),
        ],
        goals=[Goal("fast", anchor="a", min_ratio=0.0), Goal("abs", max_seconds=60)],
    )
    out = run_case(case, tmp_path, lambda _: None)
    block = out["caches"]["cold"]
    reps = [[t["rep"] for t in v["trials"]] for v in block["variants"]]
    assert reps == [[0, 1], [0, 1]]
    assert [g["verdict"] for g in block["goals"]] == ["pass", "pass"]
    assert "a" in block["ratios_vs_weightguard"]


def test_goal_verdicts() -> None:
    ok = {"status": "ok", "wall_median_s": 1.0, "cpu_median_s": 1.0}
    slow = {"status": "ok", "wall_median_s": 2.0, "cpu_median_s": 2.0}
    g = Goal(">= 1.5x", anchor="anchor", min_ratio=1.5)
    assert evaluate_goal(g, {"anchor": slow, "wg": ok}, "wg")["verdict"] == "pass"
    assert evaluate_goal(g, {"anchor": ok, "wg": slow}, "wg")["verdict"] == "miss"
    gone = {"status": "unavailable", "reason": "not available yet"}
    assert evaluate_goal(g, {"anchor": ok, "wg": gone}, "wg")["verdict"] == "n/a"


def test_report_renders_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = {
        "meta": {
            "mode": "quick",
            "started": "2026-01-01T00:00:00Z",
            "machine": {"cpu_model": "cpu", "sched_affinity": 2, "mem_total_gib": 1},
            "versions": {"torch": "x"},
            "git": {"commit": "abc", "dirty": False},
        },
        "micro": {"sha256": 1.25},
        "cases": [],
    }
    path = report.RESULTS / "quick-test-render.json"
    text = report.render_run(res, path)
    assert "quick run" in text and "sha256 1.25" in text
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\nintro\n<!-- results:begin -->\nold\n<!-- results:end -->\nend\n")
    monkeypatch.setattr(report, "README", readme)
    report.write_readme("NEW")
    assert readme.read_text() == (
        "# B\n\nintro\n<!-- results:begin -->\nNEW\n<!-- results:end -->\nend\n"
    )


def test_trial_times_setup_apart_and_records_scheduling(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"\3" * (1 << 20))
    res = run_trial(
        Variant("r", "anchor", "benchmarks.ops:read_file", {"model": str(f)}), 60, tmp_path
    )
    assert res["status"] == "ok", res
    assert res["setup_s"] > 0  # importing the op module, outside wall_s
    assert res["policy"] is realtime_ok()  # SCHED_FIFO exactly when chrt -f 1 is permitted


def test_trial_env_caches_bytecode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = trial_env()
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPYCACHEPREFIX"].endswith("benchmarks/work/pycache")


def test_placeholders_tmp_and_tmpfs(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    got = _placeholders({"a": "$TMP", "b": "$SHM", "c": 3}, tmp_path, shm)
    assert got == {"a": str(tmp_path), "b": str(shm), "c": 3}
    assert _placeholders({"b": "$SHM"}, tmp_path, None) == {"b": str(tmp_path)}


def test_every_weightguard_variant_gets_ratios_and_the_matrix_shows_them() -> None:
    variants = [
        Variant("st", "anchor", "m:f"),
        Variant("runai", "anchor", "m:f"),
        Variant("wg", "weightguard", "m:f"),
        Variant("wg first", "weightguard-first-call", "m:f"),
    ]
    med = {"st": 1.0, "runai": 3.0, "wg": 1.25, "wg first": 2.0}
    summaries = {k: {"status": "ok", "wall_median_s": v} for k, v in med.items()}
    by = _all_ratios(variants, summaries)
    assert by == {"wg": {"st": 0.8, "runai": 2.4}, "wg first": {"st": 0.5, "runai": 1.5}}
    res = {
        "cases": [
            {
                "name": "load-cpu-m",
                "group": "load-cpu",
                "caches": {
                    "warm": {
                        "variants": [{"label": v.label, "side": v.side} for v in variants],
                        "ratios_by_weightguard": by,
                    }
                },
            }
        ]
    }
    table = "\n".join(report.ratio_matrix(res))
    assert "| case | weightguard variant | st | runai |" in table
    assert "| cpu-m | wg | 0.80 | 2.40 |" in table
    assert "| cpu-m | wg first | 0.50 | 1.50 |" in table


def test_prepared_artifact_fingerprints_name_existing_sources() -> None:
    """The cache key of prepared artifacts hashes real modules (the re-layout had left it
    hashing four paths that no longer existed, so the cache would never be rebuilt)."""
    from benchmarks import prep

    root = Path(prep.__file__).resolve().parent.parent / "weightguard"
    for kind, rels in prep._WG_SOURCES.items():
        for rel in rels:
            assert (root / rel).is_file(), f"{kind}: {rel}"
    assert len(prep._fingerprint(*prep._WG_SOURCES)) == 16


def test_results_record_the_machine_and_warn_when_the_load_exceeds_the_cores(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import harness

    monkeypatch.setattr(harness, "usable_cores", lambda: 2)
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    m = harness.machine_info()
    assert m["cpu_model"] and m["kernel"] and m["cores"] == 2
    assert m["loadavg"] == [1.5, 1.0, 0.5] and "warning" not in m
    assert isinstance(m["cpu_flags"], list)  # the CPU_FLAGS present, e.g. aes, avx2
    assert "WARNING" not in capsys.readouterr().err
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (7.25, 6.0, 4.0))
    m = harness.machine_info()
    assert m["warning"].startswith("load average 7.25 exceeds the 2 usable cores")
    assert "WARNING: load average 7.25 exceeds" in capsys.readouterr().err
    logged: list[str] = []
    assert "warning" in harness.load_check(logged.append)
    assert logged and "exceeds the 2 usable cores" in logged[0]


def test_every_case_records_the_load_and_its_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import harness

    f = tmp_path / "data.bin"
    f.write_bytes(b"\4" * 4096)
    monkeypatch.setattr(harness, "usable_cores", lambda: 1)
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    case = Case(
        name="t",
        title="t",
        group="t",
        data_bytes=4096,
        inputs=[str(f)],
        reps=1,
        variants=[Variant("w", "weightguard", "benchmarks.ops:read_file", {"model": str(f)})],
    )
    logged: list[str] = []
    out = run_case(case, tmp_path, logged.append)
    assert out["loadavg"] == [3.0, 3.0]
    assert out["load_warning"].startswith("load average 3.00 exceeds the 1 usable cores")
    assert any("WARNING: load average 3.00" in line for line in logged)
    res = {
        "meta": {
            "mode": "quick",
            "started": "2026-01-01T00:00:00Z",
            "machine": {
                "cpu_model": "cpu",
                "cpu_flags": ["aes", "vaes"],
                "kernel": "6.1.0",
                "loadavg": [3.0, 2.0, 1.0],
                "sched_affinity": 1,
                "mem_total_gib": 1,
            },
            "versions": {},
            "git": {"commit": "abc", "dirty": False},
        },
        "cases": [out],
    }
    text = report.render_run(res, report.RESULTS / "quick-test-render.json")
    assert "flags aes vaes, kernel 6.1.0, load average 3.00 / 2.00 / 1.00" in text
    assert "**Warning**: load average 3.00 exceeds" in text


def test_cryptotensors_anchor_loads_every_tensor_and_is_a_load_goal(tmp_path: Path) -> None:
    pytest.importorskip("cryptotensors")
    from benchmarks import ops, prep, run

    model = models.synthetic(4, root=tmp_path)
    ct = ops.cryptotensors_prepare(str(model), str(tmp_path / "ct"))
    assert ops.cryptotensors_prepare(str(model), str(tmp_path / "ct")) == ct  # cached
    raw = (ct / "model.safetensors").read_bytes()
    assert raw != (model / "model.safetensors").read_bytes()  # encrypted
    n = prep.tensor_count(model)
    v = Variant(
        "ct", "anchor", "benchmarks.ops:cryptotensors_load", {"model": str(ct), "expect": n}
    )
    res = run_trial(v, 120, tmp_path)
    assert res["status"] == "ok", res
    assert res["bytes"] == sum(t.nbytes for t in models.plan_tensors(4))
    p = prep.Prepared(signing={"pub": "k.pem"}, cryptotensors={str(model): str(ct)})
    (case,) = run.load_cases(model, 1, p, ("warm",))
    (ctv,) = [x for x in case.variants if x.op == "benchmarks.ops:cryptotensors_load"]
    assert ctv.params["model"] == str(ct) and str(ct) in case.inputs
    assert any(g.anchor == ctv.label and g.min_ratio == 1.2 for g in case.goals)


def test_verdicts_measured_before_the_code_changed_are_stale() -> None:
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=report.ROOT, capture_output=True, text=True
    ).stdout.strip()
    first = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"],
        cwd=report.ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()[0]
    assert report.stale_since(head, "verify-synthetic-256mib (warm)") == ""
    assert "later commits to the sign path" in report.stale_since(first, "sign-x")
    assert report.stale_since("f" * 40, "load-cpu-x").endswith("not in this repository")
    assert report.stale_since(first, "startup-help") == ""  # no sources named: not judged
    g = {"goal": ">= 1.0x", "verdict": "pass", "ratio": 2.96}
    row = report._goal_row(g, "verify-m (warm)", "verify-m (warm)", first)
    assert row.startswith("| >= 1.0x | verify-m (warm) | 2.96x | **pass**, stale (")
    failed = {"goal": "g", "verdict": "n/a", "why": "KeyAccessDenied: ..."}
    assert "not measured in this run" in report._goal_row(failed, "load-m", "load-m", head)


def test_performance_blocks_are_generated_from_the_newest_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = {
        "cpu_model": "Xeon",
        "cpu_flags": ["avx512f"],
        "cores": 2,
        "kernel": "6.1",
        "loadavg": [3.0, 2.0, 1.0],
        "warning": "busy",
    }
    results = tmp_path / "results"
    results.mkdir()
    (results / "signverify-20260101T000000Z.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "reps": 3,
                "before": "abc",
                "models": {
                    "m": {
                        "loadavg_before_after": [3.0, 2.5],
                        "median": {"weightguard sign": {"wall_s": 0.2, "cpu_s": 0.25}},
                        "ratio_model_signing_over_weightguard": {
                            "weightguard sign": {"wall": 1.1, "cpu": 0.9}
                        },
                    }
                },
            }
        )
    )
    (results / "imports-20260101T000000Z.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "reps": 3,
                "model": "m",
                "tensors": 5,
                "anchor_imports_ms": 1500.0,
                "weightguard_loader_import_ms": 80.0,
                "weightguard_loader_import_cpu_ms": 60.0,
                "goal_ms": 30.0,
                "verdict": "miss",
                "verdict_cpu": "miss",
                "first_load_ms": 90.0,
                "second_load_ms": 91.0,
                "importtime_top_ms": {"(total)": 80.0, "weightguard.trust": 6.0},
            }
        )
    )
    doc = tmp_path / "performance.md"
    doc.write_text(
        "a\n<!-- signverify:begin -->\nold\n<!-- signverify:end -->\n"
        "b\n<!-- imports:begin -->\nold\n<!-- imports:end -->\nc\n"
    )
    monkeypatch.setattr(report, "PERFORMANCE", doc)
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "ROOT", tmp_path.parent)
    monkeypatch.setattr(report, "_raw", lambda p: p.name)
    done = report.write_performance()
    assert [d.split()[0] for d in done] == ["signverify", "imports"]
    text = doc.read_text()
    assert "old" not in text and text.startswith("a\n") and text.endswith("c\n")
    assert "| m | sign | 200 ms | 250 ms | 1.10 | 0.90 | 3.0 -> 2.5 |" in text
    assert "Xeon (avx512f), 2 usable cores, kernel 6.1, load average 3.00" in text
    assert "**busy: more runnable threads than cores**" in text
    assert "on top (CPU) | 60 (goal <= 30: **MISS**) |" in text
    assert "first `load_file` in the process | 90 |" in text
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:begin -->\nold\n<!-- results:end -->\n")
    monkeypatch.setattr(report, "README", readme)
    # a signverify result named on the command line: its block only, not a README run
    assert report.main([str(results / "signverify-20260101T000000Z.json")]) == 0
    assert "No results yet" in readme.read_text() and "| m | sign |" in doc.read_text()


def test_sign_and_verify_goals_are_one_x_on_shards_in_wall_and_cpu_time(tmp_path: Path) -> None:
    from benchmarks import prep, run

    model = models.synthetic(4, shards=4, root=tmp_path)
    p = prep.Prepared(signing={"priv": "k.pem", "pub": "k.pub.pem"})
    cases = run.signing_cases(model, 1, p, cli=False)
    assert [c.name.split("-")[0] for c in cases] == ["sign", "verify"]
    for c in cases:
        assert {(g.min_ratio, g.metric) for g in c.goals} == {(1.0, "wall_s"), (1.0, "cpu_s")}
    ok = {"status": "ok", "wall_median_s": 1.0, "cpu_median_s": 1.0}
    wg = {"status": "ok", "wall_median_s": 0.9, "cpu_median_s": 1.1}
    cpu_goal = next(g for g in cases[0].goals if g.metric == "cpu_s")
    res = evaluate_goal(cpu_goal, {cpu_goal.anchor or "": ok, "wg": wg}, "wg")
    assert res["verdict"] == "miss" and round(res["ratio"], 2) == 0.91
