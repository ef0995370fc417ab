"""Usable CPU count, honouring cgroup v2/v1 CPU quotas and the affinity mask.

`os.cpu_count()` reports the host's cores; inside a container limited to two CPUs a
loader that starts 64 workers thrashes.  ``usable_cpus()`` is the minimum of the
affinity mask and the cgroup quota (rounded up), at least 1.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cpus"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """Candidate cgroup directories of this process (own path first, then the root)."""
    dirs: list[Path] = []
    text = _read(proc_cgroup)
    if text:
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            controllers, rel = parts[1], parts[2].lstrip("/")
            if controllers == "" or "cpu" in controllers.split(","):
                for base in (root, root / "cpu", root / "cpu,cpuacct"):
                    candidate = base / rel if rel else base
                    if candidate not in dirs:
                        dirs.append(candidate)
    for base in (root, root / "cpu", root / "cpu,cpuacct"):
        if base not in dirs:
            dirs.append(base)
    return dirs


def cgroup_cpu_limit(
    root: Path = _CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota in cores from cgroup v2 ``cpu.max`` or v1 ``cfs_quota/period``.

    ``None`` when there is no limit or it cannot be read.
    """
    limits: list[float] = []
    for d in _own_cgroup_dirs(root, proc_cgroup):
        v2 = _read(d / "cpu.max")
        if v2:
            fields = v2.split()
            if len(fields) == 2 and fields[0] != "max":
                try:
                    quota, period = int(fields[0]), int(fields[1])
                except ValueError:
                    quota = period = 0
                if quota > 0 and period > 0:
                    limits.append(quota / period)
            continue
        q = _read(d / "cpu.cfs_quota_us")
        p = _read(d / "cpu.cfs_period_us")
        if q and p:
            try:
                quota, period = int(q), int(p)
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
    return min(limits) if limits else None


_LIMIT_TTL_S = 5.0
_limit_cache: tuple[float, float | None] | None = None


def _cached_cgroup_limit() -> float | None:
    """``cgroup_cpu_limit()``, re-read at most every few seconds: reading the cgroup
    files cost ~1 ms of every load's fixed cost, and a pod's quota changes rarely."""
    global _limit_cache
    now = time.monotonic()
    if _limit_cache is None or now - _limit_cache[0] > _LIMIT_TTL_S:
        _limit_cache = (now, cgroup_cpu_limit())
    return _limit_cache[1]


def usable_cpus() -> int:
    """Cores this process may actually use (affinity and cgroup quota), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cached_cgroup_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)
