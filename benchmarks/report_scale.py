"""How `weightguard report` scales with the size of the access log (goal: 1M events in
<= 30 s and <= 200 MB).

    python -m benchmarks.report_scale --events 1000000 [--dir /tmp/wg-report-scale]

Writes (once, cached in --dir) a log of N access events with the real AuditLog (signed
checkpoints every 1000 records), then, each in a fresh process so that peak memory is
its own, times:

* ``verify``: ``weightguard.audit.verify_log`` alone (the integrity check the report
  relies on);
* ``count``:  verification with the report's counting as its visitor (the one
  streaming pass the report makes: read, parse once, chain, count);
* ``report``: the whole ``weightguard report`` over a small signed release and the log.

Prints one JSON object: wall seconds, CPU seconds (the stage's own, so a busy machine
inflates them less) and peak RSS (MiB) per stage.  Numbers depend on the
machine: say which one when you quote them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def _prepare(d: Path, events: int) -> dict[str, str]:
    from tests.report.conftest import make_plain
    from tests.support.audit_logs import write_log
    from tests.support.load import make_sign_keys, sign
    from weightguard import audit, crypt

    d.mkdir(parents=True, exist_ok=True)
    log = d / f"audit-{events}.jsonl"
    paths = {
        "log": str(log),
        "checkpoint_pub": str(d / "cp.pem.pub"),
        "release": str(d / "release"),
        "trust_key": str(d / "release.pub"),
    }
    if not (d / "cp.pem").exists():
        audit.generate_checkpoint_key(str(d / "cp.pem"))
    if not (d / "release").exists():
        plain = make_plain(d / "plain")
        key = crypt.create_key_file(d / "data.key")
        crypt.encrypt_model(plain, d / "release", f"file://{key}", context="bench/tiny")
        keys = make_sign_keys(d, "release")
        sign(d / "release", d / "release" / "model.sig", keys)
    if not log.exists():
        t = time.perf_counter()
        # The writer's sanitizer is the slow part of writing (the values here are
        # constants with nothing to redact); the chain and the checkpoints are real.
        with mock.patch("weightguard.audit.sanitize", lambda v: v):
            write_log(log.with_suffix(".tmp"), d / "cp.pem", events, span_days=30.0)
        os.replace(log.with_suffix(".tmp"), log)
        print(f"wrote {log} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return paths


def _peak_rss_mib() -> float:
    """This process's own peak RSS: VmHWM (ru_maxrss would carry the parent's peak
    over fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stage(stage: str, p: dict[str, str]) -> None:
    """Run one stage in this (fresh) process; print {seconds, peak_rss_mib}."""
    t, c = time.perf_counter(), time.process_time()
    if stage == "verify":
        from weightguard.audit import verify_log

        r = verify_log(p["log"], checkpoint_key=p["checkpoint_pub"])
        assert r.ok, r.describe()
    elif stage == "count":
        from weightguard._internal.report.access import AccessStats
        from weightguard.audit import verify_log

        st = AccessStats()
        r = verify_log(p["log"], checkpoint_key=p["checkpoint_pub"], on_record=st.add)
        assert r.ok and st.events, r.describe()
        st.timeline()
    elif stage == "report":
        from weightguard_cli.main import main

        try:
            main(["report", p["release"], "--trust-key", p["trust_key"],
                  "--access-log", p["log"], "--checkpoint-key", p["checkpoint_pub"],
                  "-o", str(Path(p["log"]).with_suffix(".html")), "-q"])  # fmt: skip
        except SystemExit as exc:
            assert not exc.code, exc.code
    secs = time.perf_counter() - t
    cpu = time.process_time() - c  # what the stage itself used, whatever else runs
    rss = _peak_rss_mib()
    print(
        json.dumps(
            {"seconds": round(secs, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(rss, 1)}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/wg-report-scale")
    ap.add_argument("--stages", default="count,verify,report")
    ap.add_argument("--out", help="also write the result JSON to this file")
    ap.add_argument(
        "--table", metavar="RESULT_JSON", help="print docs/audit.md's scale table from results"
    )
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        _stage(a.stage, json.loads(a.paths))
        return
    if a.table:
        print(table([json.loads(Path(f).read_text()) for f in a.table.split(",")]))
        return
    from benchmarks.harness import machine_info

    paths = _prepare(Path(a.dir), a.events)
    out: dict[str, object] = {
        "events": a.events,
        "log_bytes": os.path.getsize(paths["log"]),
        "cpu": os.cpu_count(),
        "machine": machine_info(),  # CPU model + flags, cores, kernel, load average
    }
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(Path(a.dir) / "own.jsonl")}
    for stage in a.stages.split(","):
        p = subprocess.run(
            [sys.executable, "-m", "benchmarks.report_scale", "--stage", stage,
             "--paths", json.dumps(paths)],
            capture_output=True, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        if p.returncode != 0:
            out[stage] = {"error": p.stderr.strip().splitlines()[-1:]}
        else:
            out[stage] = json.loads(p.stdout.strip().splitlines()[-1])
    text = json.dumps(out, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


def table(results: list[dict[str, Any]]) -> str:
    """docs/audit.md's scale table (Markdown) from result JSONs of this script."""

    def cell(r: dict[str, Any], stage: str) -> str:
        s = r.get(stage)
        if not isinstance(s, dict) or "error" in s:
            return "not run" if s is None else "failed"
        return f"{s['cpu_seconds']} CPU-s ({s['seconds']} s wall), {s['peak_rss_mib']:.0f} MiB"

    rows = [
        "| events (log size) | `verify_log` | verify and count (the report's one pass) "
        "| whole `weightguard report` | machine |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        m = r.get("machine", {})
        load = (m.get("loadavg") or ["?"])[0]
        rows.append(
            f"| {r['events']:,} ({r['log_bytes'] / 1e6:.0f} MB) | {cell(r, 'verify')} "
            f"| {cell(r, 'count')} | {cell(r, 'report')} "
            f"| {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} cores, "
            f"load average {load} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
