"""Where one secure load's time goes: stage timers around the loader's steps.

    python -m benchmarks.stages [--model all-MiniLM-L6-v2 | synthetic-256mib ...] [--loads 15]

Loads the prepared (signed + encrypted) copy of a benchmark model ``--loads`` times in
one process, after one untimed warm-up load, with the loader's steps wrapped in timers,
and prints the median milliseconds per step and per load, the number of calls (how often
a header is parsed, how many audit events), and **outside the pipeline** = the whole
``load_file`` minus ``run_pipeline`` (the per-byte work).  Run ``make bench`` or
``python -m benchmarks.run --loads --dry-run`` first so ``benchmarks/work/prep`` holds the
model.  Timers wrap module globals, so the loader itself is not changed; their own cost is
about a microsecond per call.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import WORK

# (module, attribute, stage name): what a load does outside the per-byte pipeline
STAGES = (
    ("weightguard.loader", "_select_files", "list files"),
    ("weightguard.loader", "_verify_signature", "signature + policy"),
    ("weightguard.loader", "_open_file", "read + check header"),
    ("weightguard.loader", "_unwrap_keys", "key unwrap + header MAC + record 0"),
    ("weightguard.loader", "copier_for", "copier"),
    ("weightguard.loader", "plan", "plan"),
    ("weightguard._internal.load.copiers.CpuCopier", "allocate", "allocate"),
    ("weightguard.loader", "run_pipeline", "pipeline (per byte)"),
    ("weightguard.loader", "build_tensors", "tensor views"),
    ("weightguard.audit.AuditLog", "emit", "audit events"),
    ("weightguard._internal.format.safetensors", "parse_header_json", "(parse header JSON)"),
    ("weightguard._internal.format.layout", "read_header", "(parse artifact header)"),
)


def _resolve(path: str) -> Any:
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def instrument() -> tuple[dict[str, list[float]], dict[str, int], Callable[[], None]]:
    """Wrap the stages in timers; ``flush()`` closes one load's figures."""
    spent: dict[str, list[float]] = collections.defaultdict(list)
    calls: dict[str, int] = collections.Counter()
    current: dict[str, float] = collections.defaultdict(float)

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                current[name] += time.perf_counter() - t
                calls[name] += 1

        return timed

    for owner_path, attr, name in STAGES:
        try:
            owner = _resolve(owner_path)
        except (ImportError, AttributeError):
            continue
        fn = getattr(owner, attr, None)
        if fn is not None:
            setattr(owner, attr, wrap(name, fn))

    def flush() -> None:
        for _, _, name in STAGES:
            spent[name].append(current.pop(name, 0.0))

    return spent, calls, flush


def _prepared(model: str) -> tuple[Path, Path, Path]:
    prep = WORK / "prep"
    for d in sorted(prep.glob(f"{model}-*")):
        enc, sig = d / "encrypted", d / "encrypted.sig"
        if enc.is_dir() and sig.exists():
            return enc, sig, prep / "ec-p256.pub.pem"
    raise SystemExit(f"no prepared copy of {model!r} under {prep} (run make bench first)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stage timers of one secure load")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--loads", type=int, default=15)
    args = ap.parse_args(argv)
    enc, sig, pub = _prepared(args.model)
    import torch  # noqa: F401  (the anchors' import, before anything is timed)

    from weightguard.loader import load_file
    from weightguard.policy import PublicKey

    os.environ["WEIGHTGUARD_AUDIT_LOG"] = str(Path(tempfile.mkdtemp()) / "audit.jsonl")
    policy = PublicKey(pub.read_bytes())
    load_file(str(enc), "cpu", policy=policy, signature=str(sig))  # warm-up, untimed
    spent, calls, flush = instrument()
    totals = []
    for _ in range(args.loads):
        t = time.perf_counter()
        out = load_file(str(enc), "cpu", policy=policy, signature=str(sig))
        totals.append(time.perf_counter() - t)
        del out
        flush()
    med = {name: statistics.median(ts) * 1e3 for name, ts in spent.items()}
    total = statistics.median(totals) * 1e3
    outside = statistics.median(
        (t - p) * 1e3 for t, p in zip(totals, spent["pipeline (per byte)"], strict=True)
    )
    result = {
        "model": args.model,
        "loads": args.loads,
        "load_ms": total,
        "outside_pipeline_ms": outside,
        "stages_ms": med,
        "calls_per_load": {k: v / args.loads for k, v in calls.items()},
    }
    for name, ms in med.items():
        print(
            f"{ms:8.2f} ms  {calls.get(name, 0) / args.loads:5.1f} calls  {name}", file=sys.stderr
        )
    print(f"{total:8.2f} ms  load_file (median of {args.loads})", file=sys.stderr)
    print(f"{outside:8.2f} ms  outside the pipeline", file=sys.stderr)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
