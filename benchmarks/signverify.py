"""Sign and verify against model_signing, in one process, variants alternating.

    python -m benchmarks.signverify [--reps 7] [--before REV] [--sizes 256]

For the synthetic model of ``--sizes`` MiB (one file, and 4 shards): model_signing's
``sign``/``verify`` (EC P-256 key, SHA-256, the default ``files`` serialization) against
weightguard's ``sign_model`` (SHA-256 resource digests and BLAKE3 chunk digests from one
pass) and ``verify_bundle`` (every byte against the SHA-256 resource digests; the
``verify (check_chunk_digests)`` row also recomputes the BLAKE3 chunk digests, as
verification did before), repetition *r* rotated by *r*; ``--before REV`` adds
weightguard with the hashing module of git revision ``REV`` (before/after in the same
run; with a hashing module older than ``hash_files(chunks=...)``, verify computes both
digests, as it did then).  Reports the median wall time and CPU time (user + system, all
threads) and the ratios model_signing / weightguard (> 1: weightguard faster), with the
machine (load average: on a busy machine compare the CPU-time ratios, or run it under
``chrt -f 1``, recorded as ``sched_fifo``), and the CPU seconds per GB of each hash on
one thread over the model's bytes, measured in the same run (``hash_cpu_s_per_gb``:
SHA-256 and BLAKE3 in 4 MiB chunks from a mapping, and the 1 MiB ``read`` copies
model_signing makes).  In one process, unlike ``benchmarks.run``'s fresh process per
trial: the imports are paid once, before timing.  Writes
``benchmarks/results/signverify-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import models, prep
from benchmarks.harness import RESULTS, ROOT, load_check, machine_info


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _hashing_at(rev: str) -> Any:
    src = subprocess.run(
        ["git", "show", f"{rev}:weightguard/_internal/signing/hashing.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "hashing_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("hashing_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hashing_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def _legacy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A ``hash_files`` from before ``chunks=``: it always computed both digests."""

    def hash_files(jobs: Any, *, workers: int | None = None, chunks: bool = True) -> Any:
        return fn(jobs, workers=workers)

    return hash_files


def _hash_costs(model: Path, reps: int) -> dict[str, float]:
    """CPU seconds per GB (10^9 bytes), one thread, median of ``reps``, of each hash over
    the model's files: from a read-only mapping (as weightguard hashes), and the copies
    of model_signing's 1 MiB ``read`` calls alone."""
    import hashlib
    import mmap

    from blake3 import blake3

    files = sorted(p for p in model.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)

    def mapped(each: Callable[[memoryview], None]) -> None:
        for p in files:
            with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                mv = memoryview(m)
                try:
                    each(mv)
                finally:
                    mv.release()

    def sha256(mv: memoryview) -> None:
        h = hashlib.sha256()
        for o in range(0, len(mv), 4 << 20):
            h.update(mv[o : o + (4 << 20)])
        h.digest()

    def b3(mv: memoryview) -> None:
        for o in range(0, len(mv), 4 << 20):
            blake3(mv[o : o + (4 << 20)]).digest()

    def reads() -> None:
        for p in files:
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass

    runs: dict[str, Callable[[], None]] = {
        "sha256": lambda: mapped(sha256),
        "blake3 (4 MiB chunks)": lambda: mapped(b3),
        "1 MiB read copies (model_signing)": reads,
    }
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(max(1, reps)):
        for k, fn in runs.items():
            c = _cpu()
            fn()
            out[k].append((_cpu() - c) / (total / 1e9))
    return {k: round(statistics.median(v), 3) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--before", default="", help="git revision of the hashing to compare")
    ap.add_argument("--sizes", default="256")
    ap.add_argument("--out", default="", help="result file (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    logging.getLogger("weightguard.signing").setLevel(logging.ERROR)  # replace=True anyway
    from model_signing import signing as mss
    from model_signing import verifying as msv

    from weightguard import signing as wgs
    from weightguard._internal.signing import hashing
    from weightguard.policy import PublicKey

    p = prep.Prepared.load_or_init()
    priv, pub = p.signing["priv"], p.signing["pub"]
    signer = wgs.KeySigner.from_file(priv)
    policy = PublicKey(Path(pub).read_bytes())
    current = hashing.hash_files
    hashers: dict[str, Any] = {"": current}
    if args.before:
        hashers[f" ({args.before})"] = _legacy(_hashing_at(args.before).hash_files)
    tmp = Path(tempfile.mkdtemp(prefix="wg-signverify-"))
    result: dict[str, Any] = {
        "machine": machine_info(),
        "reps": args.reps,
        "before": args.before,
        # run as ``chrt -f 1 python -m benchmarks.signverify``: SCHED_FIFO, the threads get
        # the cores they ask for on a shared machine (as benchmarks.run's trials)
        "sched_fifo": os.sched_getscheduler(0) == getattr(os, "SCHED_FIFO", -1),
        "models": {},
    }
    for size in [int(s) for s in args.sizes.split(",")]:
        for shards in (1, 4):
            m = models.synthetic(size, shards=shards)

            def ms_sign(m: Path = m) -> object:
                signer = mss.Config().use_elliptic_key_signer(private_key=priv)
                return signer.sign(m, tmp / "ms.sig")

            def ms_verify(m: Path = m) -> object:
                verifier = msv.Config().use_elliptic_key_verifier(public_key=pub)
                return verifier.verify(m, tmp / "ms.sig")

            fns: dict[str, Callable[[], object]] = {
                "model_signing sign": ms_sign,
                "model_signing verify": ms_verify,
            }
            for tag, fn in hashers.items():

                def sign(m: Path = m, fn: Any = fn) -> object:
                    hashing.hash_files = fn
                    return wgs.sign_model(m, tmp / "wg.sig", signer, replace=True)

                def verify(m: Path = m, fn: Any = fn) -> object:
                    hashing.hash_files = fn
                    return wgs.verify_bundle(m, tmp / "wg.sig", policy)

                fns[f"weightguard sign{tag}"] = sign
                fns[f"weightguard verify{tag}"] = verify
                if not tag:

                    def verify_chunks(m: Path = m, fn: Any = fn) -> object:
                        hashing.hash_files = fn
                        return wgs.verify_bundle(
                            m, tmp / "wg.sig", policy, check_chunk_digests=True
                        )

                    fns["weightguard verify (check_chunk_digests)"] = verify_chunks
            try:
                fns["model_signing sign"]()
                fns["weightguard sign"]()
                times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
                order = list(fns)
                before = load_check()
                for r in range(args.reps):
                    for k in order[r % len(order) :] + order[: r % len(order)]:
                        c, t = _cpu(), time.perf_counter()
                        fns[k]()
                        times[k].append((time.perf_counter() - t, _cpu() - c))
            finally:
                hashing.hash_files = current
            med = {
                k: {
                    "wall_s": statistics.median(w for w, _ in ts),
                    "cpu_s": statistics.median(c for _, c in ts),
                }
                for k, ts in times.items()
            }
            ratios = {}
            for k, v in med.items():
                if k.startswith("weightguard"):
                    anchor = med["model_signing " + k.split()[1]]
                    ratios[k] = {
                        "wall": anchor["wall_s"] / v["wall_s"],
                        "cpu": anchor["cpu_s"] / v["cpu_s"],
                    }
            name = m.name
            result["models"][name] = {
                "bytes": models.model_bytes(m),
                "loadavg_before_after": [before["loadavg"][0], round(os.getloadavg()[0], 2)],
                "median": med,
                "ratio_model_signing_over_weightguard": ratios,
                "hash_cpu_s_per_gb": _hash_costs(m, args.reps),
            }
            print(f"{name}: load average {before['loadavg'][0]:.1f} -> {os.getloadavg()[0]:.1f}")
            for k, rt in ratios.items():
                v = med[k]
                print(
                    f"  {k:34} {v['wall_s'] * 1e3:6.0f} ms (cpu {v['cpu_s'] * 1e3:5.0f})"
                    f"  x model_signing: wall {rt['wall']:.2f}  cpu {rt['cpu']:.2f}"
                )
            print(f"  CPU-s/GB, one thread: {result['models'][name]['hash_cpu_s_per_gb']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) if args.out else RESULTS / f"signverify-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
