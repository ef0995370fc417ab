"""Experiment (issue 25 item 3): a thread that pre-faults the output ahead of the workers.

    chrt -f 1 python -m benchmarks.prefault [--model synthetic-256mib] [--reps 9] [--cold]

Secure loads of the signed + encrypted copy of ``--model`` in one process, alternating:
the loader as it is (each worker populates its record's destination with
``MADV_POPULATE_WRITE`` just before decrypting into it), and the same with one extra
thread started when the output is allocated that populates the whole output, in order,
4 MiB at a time, while the workers decrypt (the workers' own populate then finds the
pages mapped).  ``--cold`` evicts the input from the page cache before each load (reads
wait on the disk: the case where a thread would otherwise wait).  Prints the median wall
and CPU time of each (and the load average); the loader itself is not changed (the
copier's ``allocate`` is wrapped for the variant).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import evict, machine_info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="synthetic-256mib")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args(argv)
    import torch  # noqa: F401  (before anything is timed)

    from benchmarks.stages import _prepared
    from weightguard._internal.load import copiers
    from weightguard.loader import load_file
    from weightguard.policy import PublicKey

    enc, sig, pub, key = _prepared(args.model)
    policy = PublicKey(pub.read_bytes())
    plain_allocate = copiers.CpuCopier.allocate
    threads: list[threading.Thread] = []

    def allocate_and_prefault(self: Any, sizes: list[int]) -> None:
        plain_allocate(self, sizes)
        spans = list(zip(self._ptrs, sizes, strict=True))

        def ahead() -> None:
            for ptr, n in spans:
                for off in range(0, n, 4 << 20):
                    copiers.populate_for_write(ptr + off, min(4 << 20, n - off))

        t = threading.Thread(target=ahead, daemon=True)
        t.start()
        threads.append(t)

    def one(prefault: bool) -> tuple[float, float]:
        if args.cold:
            evict([enc])
        copiers.CpuCopier.allocate = allocate_and_prefault if prefault else plain_allocate
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        try:
            out = load_file(str(enc), "cpu", policy=policy, signature=str(sig), data_key=key)
            wall = time.perf_counter() - t0
            for t in threads:
                t.join()
            threads.clear()
        finally:
            copiers.CpuCopier.allocate = plain_allocate
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        del out
        return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime

    saved = os.environ.get("WEIGHTGUARD_AUDIT_LOG")
    with tempfile.TemporaryDirectory(prefix="wg-prefault-") as tmp:
        os.environ["WEIGHTGUARD_AUDIT_LOG"] = str(Path(tmp) / "audit.jsonl")
        try:
            one(False), one(True)  # warm-up
            runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for r in range(args.reps):
                for pf in (False, True) if r % 2 == 0 else (True, False):
                    runs[pf].append(one(pf))
        finally:
            if saved is None:
                os.environ.pop("WEIGHTGUARD_AUDIT_LOG", None)
            else:
                os.environ["WEIGHTGUARD_AUDIT_LOG"] = saved
    result = {
        "model": args.model,
        "cold": args.cold,
        "reps": args.reps,
        "sched_fifo": os.sched_getscheduler(0) == getattr(os, "SCHED_FIFO", -1),
        "machine": machine_info(),
        **{
            ("prefault_thread" if pf else "as_is"): {
                "wall_ms": statistics.median(w for w, _ in v) * 1e3,
                "cpu_ms": statistics.median(c for _, c in v) * 1e3,
            }
            for pf, v in runs.items()
        },
    }
    for k in ("as_is", "prefault_thread"):
        print(f"{k:16} wall {result[k]['wall_ms']:6.0f} ms  cpu {result[k]['cpu_ms']:6.0f} ms")
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
