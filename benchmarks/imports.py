"""First call: what ``import weightguard.loader`` adds to ``import torch, safetensors``, and
what a process's first secure load costs against its later ones.

    python -m benchmarks.imports [--reps 7] [--model all-MiniLM-L6-v2] [--baseline DIR]

Every trial is a fresh interpreter under ``-X importtime`` (bytecode cached, as
``benchmarks.run`` trials), the two variants alternating:

- ``anchor``: ``import torch, safetensors, safetensors.torch`` (what every anchor imports);
- ``weightguard``: the same, then ``from weightguard import load_file`` (the documented
  entry point: it imports ``weightguard.loader`` with the cyclic garbage collector
  paused, so the import does not set off a full collection over torch's objects), then
  two secure loads of
  the signed + encrypted model (``--model``; made under ``benchmarks/work/prep`` when
  missing): the first and the second ``load_file`` are timed apart.

- ``baseline`` (with ``--baseline DIR``): the ``weightguard`` variant importing the
  package from ``DIR`` (e.g. ``git archive <rev> weightguard | tar -x -C DIR``), the three
  variants alternating: on a shared machine the absolute figures swing with the load,
  the difference to the baseline measured in the same run much less.

Reported (medians): the imports' wall and CPU time in each variant and the difference (the
loader's import cost above torch + safetensors; goal <= 30 ms), the modules
``-X importtime`` charges to the imports after the anchors' (cumulative, top ones), how
many ``@dataclass`` classes the import creates and their CPU time (each ~0.5 ms: its
generated methods are ``exec``'d), and the first and second load (``weightguard.loader``
imports what every load needs eagerly, so the first load costs what later ones do:
import + first load is what a process pays).
Writes ``benchmarks/results/imports-<stamp>.json`` with the machine (load average).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, ROOT, load_check, machine_info, trial_env

GOAL_MS = 30.0
ANCHOR = "import torch, safetensors, safetensors.torch"
_LOADS_MARKER = "@@LOADS@@"
_ROW = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")

_CHILD = """
import json, os, sys, time
t0, c0 = time.perf_counter(), time.process_time()
{anchor}
t1, c1 = time.perf_counter(), time.process_time()
out = {{"anchor_s": t1 - t0, "anchor_cpu_s": c1 - c0}}
if {wg}:
    import dataclasses
    import importlib

    made = [0, 0.0]  # dataclasses created during the import, their CPU time
    by_module = {{}}  # module -> [classes, CPU seconds]
    process_class = dataclasses._process_class

    def counted(cls, *a, **k):
        c = time.process_time()
        try:
            return process_class(cls, *a, **k)
        finally:
            spent = time.process_time() - c
            made[0] += 1
            made[1] += spent
            row = by_module.setdefault(cls.__module__, [0, 0.0])
            row[0] += 1
            row[1] += spent

    dataclasses._process_class = counted
    # importlib.import_module (the package's lazy __getattr__, the loader's list of what a
    # load needs) bypasses -X importtime's report; the import statement does not
    import_module = importlib.import_module

    def reported(name, package=None):
        if package is None and not name.startswith("."):
            __import__(name)
            return sys.modules[name]
        return import_module(name, package)

    importlib.import_module = reported
    t1, c1 = time.perf_counter(), time.process_time()  # the wrapper is not timed
    from weightguard import load_file  # the documented entry point
    t2, c2 = time.perf_counter(), time.process_time()
    out["weightguard_s"] = t2 - t1
    out["weightguard_cpu_s"] = c2 - c1
    dataclasses._process_class = process_class
    importlib.import_module = import_module
    out["dataclasses"], out["dataclasses_cpu_s"] = made
    out["dataclasses_by_module"] = by_module
    sys.stderr.write("{marker}\\n")  # -X importtime rows below: imported by the loads
    sys.stderr.flush()
    import inspect
    from weightguard.policy import PublicKey
    enc, sig, pub, key = json.loads(sys.argv[1])
    os.environ["WEIGHTGUARD_AUDIT_LOG"] = sys.argv[2]
    # the data key's keyword (data_key since the keyword renames; key before)
    kw = "data_key" if "data_key" in inspect.signature(load_file).parameters else "key"
    for k in ("first_load_s", "second_load_s"):
        t = time.perf_counter()
        res = load_file(
            enc, "cpu", policy=PublicKey(open(pub, "rb").read()), signature=sig, **{{kw: key}}
        )
        out[k] = time.perf_counter() - t
        out["tensors"] = len(res)
        del res
print("@@IMPORTS@@" + json.dumps(out))
"""


def parse_importtime(stderr: str, after: str = "safetensors.torch") -> dict[str, float]:
    """Cumulative milliseconds ``-X importtime`` charges to each top-level import made
    after the anchors' (``after``: the last of them) and before the loads (the child's
    marker line), to their total (``"(total)"``), and to the direct children of each
    top-level ``weightguard*`` import."""
    rows = []
    for line in stderr.splitlines():
        if line == _LOADS_MARKER:
            break
        m = _ROW.match(line)
        if m:
            rows.append((int(m[2]) / 1000, len(m[3]), m[4]))
    start = max((i for i, r in enumerate(rows) if r[1] == 1 and r[2] == after), default=-1)
    out: dict[str, float] = {"(total)": 0.0}
    for i, (cum, depth, name) in enumerate(rows):
        if depth != 1 or i <= start:
            continue
        out[name] = out.get(name, 0.0) + cum
        out["(total)"] += cum
        if name.startswith("weightguard"):
            j = i - 1  # children come before their parent
            while j >= 0 and rows[j][1] > 1:
                if rows[j][1] == 3:  # direct children
                    out[f"{name} <- {rows[j][2]}"] = rows[j][0]
                j -= 1
    return out


def _by_module(trials: list[dict[str, Any]]) -> dict[str, list[float]]:
    """``@dataclass`` classes each module creates in the import, and their CPU ms
    (median over ``trials``), most expensive first."""
    rows: dict[str, list[list[float]]] = collections.defaultdict(list)
    for t in trials:
        for mod, (n, cpu_s) in t.get("dataclasses_by_module", {}).items():
            rows[mod].append([n, cpu_s * 1e3])
    out = {
        m: [max(r[0] for r in v), round(statistics.median(r[1] for r in v), 2)]
        for m, v in rows.items()
    }
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def first_load_imports(stderr: str) -> list[str]:
    """The top-level imports ``-X importtime`` reports after the child's marker: what
    the first load imported (the second imports nothing new)."""
    lines = stderr.splitlines()
    if _LOADS_MARKER not in lines:
        return []
    rest = lines[lines.index(_LOADS_MARKER) + 1 :]
    return [m[4] for m in map(_ROW.match, rest) if m and len(m[3]) == 1]


def _trial(wg: bool, spec: list[str], audit: str, package_dir: Path = ROOT) -> dict[str, Any]:
    """One fresh interpreter; ``package_dir``: where ``weightguard`` is imported from (the
    child's working directory, first on its ``sys.path``)."""
    code = _CHILD.format(anchor=ANCHOR, wg=wg, marker=_LOADS_MARKER)
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, json.dumps(spec), audit],
        cwd=package_dir,
        env=trial_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in p.stdout.splitlines() if x.startswith("@@IMPORTS@@")), None)
    if line is None:
        raise RuntimeError(f"trial failed ({p.returncode}): {p.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(line[len("@@IMPORTS@@") :])
    res["importtime_ms"] = parse_importtime(p.stderr)
    res["first_load_imports"] = first_load_imports(p.stderr)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--out", default="", help="result file (default benchmarks/results/...)")
    ap.add_argument(
        "--baseline",
        default="",
        help="a directory holding another weightguard package, timed alternating (before/after)",
    )
    args = ap.parse_args(argv)
    baseline = Path(args.baseline).resolve() if args.baseline else None
    if baseline is not None and not (baseline / "weightguard" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {baseline}: no weightguard package there")
    from benchmarks.stages import _prepared

    enc, sig, pub, key = _prepared(args.model)
    spec = [str(enc), str(sig), str(pub), key]
    audit = str(RESULTS.parent / "work" / "imports-audit.jsonl")
    meta = machine_info()
    trials: dict[str, list[dict[str, Any]]] = {"anchor": [], "weightguard": []}
    order = ["anchor", "weightguard"]
    if baseline is not None:
        trials["baseline"] = []
        order.append("baseline")
    for r in range(args.reps):
        for v in order[r % len(order) :] + order[: r % len(order)]:  # none always first
            where = baseline if v == "baseline" and baseline is not None else ROOT
            trials[v].append(_trial(v != "anchor", spec, audit, where))
    Path(audit).unlink(missing_ok=True)

    def med(variant: str, key: str) -> float:
        return statistics.median(t[key] for t in trials[variant]) * 1e3

    modules: dict[str, list[float]] = collections.defaultdict(list)
    for t in trials["weightguard"]:
        for name, ms in t["importtime_ms"].items():
            modules[name].append(ms)
    top = sorted(((n, statistics.median(v)) for n, v in modules.items()), key=lambda kv: -kv[1])[
        :15
    ]
    anchor_ms, with_wg = med("anchor", "anchor_s"), med("weightguard", "anchor_s")
    added = med("weightguard", "weightguard_s")
    added_cpu = med("weightguard", "weightguard_cpu_s")
    dataclasses_cpu = med("weightguard", "dataclasses_cpu_s")
    result = {
        "machine": meta,
        # run as ``chrt -f 1 python -m benchmarks.imports``: SCHED_FIFO (trials inherit it)
        "sched_fifo": os.sched_getscheduler(0) == getattr(os, "SCHED_FIFO", -1),
        "reps": args.reps,
        "model": args.model,
        "tensors": trials["weightguard"][0]["tensors"],
        "anchor_imports_ms": anchor_ms,
        "anchor_imports_in_weightguard_trials_ms": with_wg,
        "anchor_imports_cpu_ms": med("anchor", "anchor_cpu_s"),
        "weightguard_loader_import_ms": added,
        "weightguard_loader_import_cpu_ms": added_cpu,
        "goal_ms": GOAL_MS,
        "verdict": "pass" if added <= GOAL_MS else "miss",
        "verdict_cpu": "pass" if added_cpu <= GOAL_MS else "miss",
        # @dataclass creation (exec of generated methods) inside the import
        "dataclasses_created": trials["weightguard"][0]["dataclasses"],
        "dataclasses_cpu_ms": dataclasses_cpu,
        # per module: classes, CPU ms (median over the trials)
        "dataclasses_by_module": _by_module(trials["weightguard"]),
        "first_load_ms": med("weightguard", "first_load_s"),
        "second_load_ms": med("weightguard", "second_load_s"),
        "importtime_top_ms": dict(top),
        # top-level modules the first load imported (not the import's; e.g. the policy's
        # PEM parsing imports cryptography's serialization package)
        "first_load_imports": trials["weightguard"][0].get("first_load_imports", []),
        "loadavg_after": load_check()["loadavg"],
        "trials": trials,
    }
    if baseline is not None:
        result["baseline"] = {
            "dir": str(baseline),
            "weightguard_loader_import_ms": med("baseline", "weightguard_s"),
            "weightguard_loader_import_cpu_ms": med("baseline", "weightguard_cpu_s"),
            "dataclasses_created": trials["baseline"][0]["dataclasses"],
            "dataclasses_cpu_ms": med("baseline", "dataclasses_cpu_s"),
            "first_load_ms": med("baseline", "first_load_s"),
        }
    print(f"{ANCHOR}: {anchor_ms:.0f} ms (in the weightguard trials {with_wg:.0f} ms)")
    print(
        f"from weightguard import load_file on top: {added:.0f} ms wall, {added_cpu:.0f} ms CPU "
        f"(goal <= {GOAL_MS:.0f} ms: {result['verdict']} / CPU {result['verdict_cpu']})"
    )
    print(
        f"of which {result['dataclasses_created']} @dataclass creations: "
        f"{dataclasses_cpu:.0f} ms CPU"
    )
    print(
        f"first load_file {result['first_load_ms']:.0f} ms, second "
        f"{result['second_load_ms']:.0f} ms ({args.model}, {result['tensors']} tensors)"
    )
    if baseline is not None:
        b = result["baseline"]
        print(
            f"baseline ({baseline}): {b['weightguard_loader_import_ms']:.0f} ms wall, "
            f"{b['weightguard_loader_import_cpu_ms']:.0f} ms CPU, "
            f"{b['dataclasses_created']} @dataclass creations "
            f"({b['dataclasses_cpu_ms']:.0f} ms CPU); this tree / baseline CPU: "
            f"{added_cpu / b['weightguard_loader_import_cpu_ms']:.2f}"
        )
    for name, ms in top:
        print(f"   {ms:7.1f} ms  {name}")
    print(f"imported by the first load: {', '.join(result['first_load_imports']) or 'nothing'}")
    print("@dataclass classes by module (classes, CPU ms):")
    for mod, (n, ms) in list(result["dataclasses_by_module"].items())[:12]:
        print(f"   {ms:7.1f} ms  {n:2.0f}  {mod}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) if args.out else RESULTS / f"imports-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
