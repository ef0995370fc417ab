"""Where one secure load's time goes: stage timers around the loader's steps.

    python -m benchmarks.stages [--model all-MiniLM-L6-v2 | synthetic-256mib ...] [--loads 15]

Loads the signed + encrypted copy of a benchmark model ``--loads`` times in one process,
after one untimed warm-up load, with the loader's steps wrapped in timers, and prints the
median milliseconds per step and per load, the number of calls (how often a header is
parsed, how many audit events), and **outside the pipeline** = the whole ``load_file``
minus ``run_pipeline`` (the per-byte work), then the figures as JSON (with the machine:
CPU model and flags, cores, kernel, load average).  The copy is made under
``benchmarks/work/prep`` (untimed) when no run has made it yet; the data key is named by
the caller (``key=``), as a deployment names it.  Timers wrap module globals, restored
afterwards, so the loader itself is not changed; their own cost is about a microsecond
per call.  A stage that no longer exists under its name stops the run (it would
otherwise report 0 calls).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.harness import machine_info

# (module, attribute, stage name): what a load does outside the per-byte pipeline.  Every
# one must resolve (a renamed loader function fails here, rather than timing nothing).
STAGES = (
    ("weightguard.loader", "select_files", "list files"),
    ("weightguard.loader", "_verify_signature", "signature + policy"),
    ("weightguard.loader", "open_file", "read + check header"),
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
# Parts of the stages above, called only for some files: a plain safetensors header or an
# encrypted tensor table is parsed by parse_header_json; an artifact whose table is in the
# clear (the default) is validated inside read_header, and its parse_header_json count is 0.
SUBSTAGES = ("(parse header JSON)", "(parse artifact header)")
PIPELINE = "pipeline (per byte)"


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


@contextlib.contextmanager
def instrument() -> Iterator[tuple[dict[str, list[float]], dict[str, int], Callable[[], None]]]:
    """Wrap the stages in timers (restored on exit); ``flush()`` closes one load's figures.

    A stage that no longer resolves raises ``LookupError`` naming it."""
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

    saved: list[tuple[Any, str, Any]] = []
    try:
        for owner_path, attr, name in STAGES:
            try:
                owner = _resolve(owner_path)
                fn = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            except (ImportError, AttributeError, KeyError):
                raise LookupError(f"stage {name!r}: {owner_path}.{attr} not found") from None
            saved.append((owner, attr, fn))
            setattr(owner, attr, wrap(name, fn))

        def flush() -> None:
            for _, _, name in STAGES:
                spent[name].append(current.pop(name, 0.0))

        yield spent, calls, flush
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)


def _prepared(model: str) -> tuple[Path, Path, Path, str]:
    """The signed + encrypted copy of a benchmark model, made (untimed) when missing.

    ``model``: ``all-MiniLM-L6-v2``, ``synthetic-<N>mib`` or ``synthetic-<N>mib-<S>shards``,
    or the path of a model directory."""
    from benchmarks import models, prep

    m = re.fullmatch(r"synthetic-(\d+)mib(?:-(\d+)shards)?", model)
    if model == "all-MiniLM-L6-v2":
        model_dir = models.minilm()
    elif m:
        model_dir = models.synthetic(int(m[1]), shards=int(m[2] or 1))
    elif Path(model).is_dir():
        model_dir = Path(model)
    else:
        raise SystemExit(f"unknown model {model!r} (all-MiniLM-L6-v2, synthetic-256mib, a dir)")
    p = prep.Prepared.load_or_init()
    info = p.prepare_encrypted(model_dir)
    if not info.get("dir"):
        raise SystemExit(f"could not prepare {model_dir}: {info.get('error')}")
    return Path(info["dir"]), Path(info["sig"]), Path(p.signing["pub"]), p.key_uri


def measure(enc: Path, sig: Path, pub: Path, key: str, loads: int) -> dict[str, Any]:
    """Stage timers over ``loads`` loads (after one untimed warm-up) in this process.

    ``key``: the data key's URI, named by the caller as a deployment would (a header's
    ``file://`` reference alone is refused, ``KeyAccessDenied``)."""
    import torch  # noqa: F401  (the anchors' import, before anything is timed)

    from weightguard.loader import load_file
    from weightguard.policy import PublicKey

    policy = PublicKey(pub.read_bytes())
    saved = os.environ.get("WEIGHTGUARD_AUDIT_LOG")
    with tempfile.TemporaryDirectory(prefix="wg-stages-") as tmp:
        os.environ["WEIGHTGUARD_AUDIT_LOG"] = str(Path(tmp) / "audit.jsonl")
        try:

            def one() -> int:
                out = load_file(str(enc), "cpu", policy=policy, signature=str(sig), data_key=key)
                n = len(out)
                del out
                return n

            tensors = one()  # warm-up, untimed
            totals = []
            with instrument() as (spent, calls, flush):
                for _ in range(loads):
                    t = time.perf_counter()
                    one()
                    totals.append(time.perf_counter() - t)
                    flush()
        finally:
            if saved is None:
                os.environ.pop("WEIGHTGUARD_AUDIT_LOG", None)
            else:
                os.environ["WEIGHTGUARD_AUDIT_LOG"] = saved
    med = {name: statistics.median(ts) * 1e3 for name, ts in spent.items()}
    outside = statistics.median((t - p) * 1e3 for t, p in zip(totals, spent[PIPELINE], strict=True))
    return {
        "model": str(enc),
        "tensors": tensors,
        "loads": loads,
        "load_ms": statistics.median(totals) * 1e3,
        "outside_pipeline_ms": outside,
        "stages_ms": med,
        "calls_per_load": {name: calls.get(name, 0) / loads for _, _, name in STAGES},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stage timers of one secure load")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--loads", type=int, default=15)
    args = ap.parse_args(argv)
    enc, sig, pub, key = _prepared(args.model)
    result = {"model_name": args.model, **measure(enc, sig, pub, key, args.loads)}
    result["machine"] = machine_info()
    calls = result["calls_per_load"]
    for name, ms in result["stages_ms"].items():
        print(f"{ms:8.2f} ms  {calls[name]:5.1f} calls  {name}", file=sys.stderr)
    print(f"{result['load_ms']:8.2f} ms  load_file (median of {args.loads})", file=sys.stderr)
    print(f"{result['outside_pipeline_ms']:8.2f} ms  outside the pipeline", file=sys.stderr)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
