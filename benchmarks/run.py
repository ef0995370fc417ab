"""Run the benchmarks: ``python -m benchmarks.run --quick | --full | --gpu``.

- ``--quick`` (``make bench``): 256 MiB synthetic model (one file and 4 shards) and the
  real all-MiniLM-L6-v2, 3 repetitions; about 5 minutes on 2 cores.
- ``--full`` (``make bench-full``): 1 GiB and 4 GiB models, 5 repetitions, warm and cold
  page cache.
- ``--gpu``: the CUDA loads (1 GiB and 4 GiB) plus the CPU load case; refuses to run
  without CUDA.  See ``benchmarks/gpu.sh`` for the offline GPU machine.
- ``--goals``: only the cases that carry an issue goal, on the 1 GiB model (one file and
  4 shards), warm cache, 3 repetitions (split it with ``--only`` + ``--append`` to keep
  each invocation short).
- ``--oms``: issue 21's load goal alone: secure load of a plain model signed by
  model_signing (its default: files, sha256) against ``model_signing verify`` on it, one
  file and 4 shards (256 MiB unless ``--sizes``), 5 repetitions, warm.

Results go to ``benchmarks/results/<mode>-<UTC time>.json``; then
``python -m benchmarks.report`` rewrites the table in ``benchmarks/README.md``.
``--only NAME[,NAME]`` runs the cases whose name contains one of the words.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import models, prep
from benchmarks.harness import RESULTS, WORK, Case, Goal, Variant, run_case, run_meta

MODES: dict[str, dict[str, Any]] = {
    # quick: each trial pays a fresh interpreter + torch import (~2.5 s on 2 cores), so the
    # variants that carry no goal are left out of the cold pass and the extra cases.
    "quick": {"sizes": [256], "shard_size": 256, "reps": 3, "load_caches": ("warm", "cold")},
    "full": {"sizes": [1024, 4096], "shard_size": 1024, "reps": 5, "load_caches": ("cold", "warm")},
    # goals: the goal cases on the 1 GiB model (one file and 4 shards), warm only
    "goals": {"sizes": [1024], "shard_size": 1024, "reps": 3, "load_caches": ("warm",)},
    "gpu": {"sizes": [1024, 4096], "shard_size": 1024, "reps": 3, "load_caches": ("warm",)},
    # loads: issue 17's table: the three models, every load anchor, first call next to
    # pre-imported, encrypt like with like; 7 repetitions, warm (make bench-loads)
    "loads": {"sizes": [256, 1024], "shard_size": 256, "reps": 7, "load_caches": ("warm",)},
    # oms: issue 21's goal: load a model_signing-signed model vs model_signing verify alone
    "oms": {"sizes": [256], "shard_size": 256, "reps": 5, "load_caches": ("warm",)},
}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _size_label(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def startup_cases(reps: int) -> list[Case]:
    return [
        Case(
            name="startup-help",
            title="`weightguard --help` start-up (subprocess)",
            group="cli",
            data_bytes=0,
            reps=max(reps, 7),
            variants=[
                Variant("python -c pass", "baseline", "benchmarks.ops:noop_python", cli=True),
                Variant("weightguard --help", "weightguard", "benchmarks.ops:wg_help", cli=True),
            ],
            goals=[Goal("`weightguard --help` < 0.3 s", max_seconds=0.3)],
        )
    ]


def encrypt_cases(
    model_dir: Path, reps: int, p: prep.Prepared, file_to_file: bool = True
) -> list[Case]:
    src = str(model_dir / "model.safetensors")
    nbytes = models.model_bytes(model_dir)
    size = _size_label(nbytes)
    # Like with like: both write to tmpfs (no disk I/O, fsync is free), and both write
    # durably to disk (weightguard's atomic write fsyncs; tensorizer's output is fsynced
    # inside its timer).  The goal is judged on the tmpfs pair.
    variants = [
        Variant(
            "tensorizer encrypted serialize (state dict in memory) to tmpfs",
            "anchor",
            "benchmarks.ops:tensorizer_encrypt",
            {"model": src, "out_dir": "$SHM", "preload": True},
        ),
        Variant(
            "weightguard encrypt_file to tmpfs",
            "weightguard",
            "benchmarks.wg_ops:encrypt",
            {"src": src, "out_dir": "$SHM", "key_uri": p.key_uri, "prep_error": p.error},
        ),
        Variant(
            "tensorizer encrypted serialize (state dict in memory) to disk + fsync",
            "anchor",
            "benchmarks.ops:tensorizer_encrypt",
            {"model": src, "out_dir": "$TMP", "preload": True, "durable": True},
        ),
        Variant(
            "weightguard encrypt_file to disk (atomic, fsync)",
            "weightguard-durable",
            "benchmarks.wg_ops:encrypt",
            {"src": src, "out_dir": "$TMP", "key_uri": p.key_uri, "prep_error": p.error},
        ),
    ]
    if file_to_file:
        variants.insert(
            1,
            Variant(
                "tensorizer load_file + encrypted serialize (file to file, fsync)",
                "anchor",
                "benchmarks.ops:tensorizer_encrypt",
                {"model": src, "out_dir": "$TMP", "preload": False, "durable": True},
            ),
        )
    return [
        Case(
            name=f"encrypt-{model_dir.name}",
            title=f"encrypt one {size} safetensors file",
            group="encrypt",
            data_bytes=nbytes,
            inputs=[src],
            reps=reps,
            variants=variants,
            goals=[
                Goal(
                    ">= 5x tensorizer encrypted serialize (both to tmpfs)",
                    anchor=variants[0].label,
                    min_ratio=5.0,
                ),
                Goal(
                    ">= 5x tensorizer encrypted serialize (both durable on disk)",
                    anchor=variants[2].label,
                    min_ratio=5.0,
                    wg_label=variants[3].label,
                ),
            ],
        )
    ]


def signing_cases(model_dir: Path, reps: int, p: prep.Prepared, cli: bool) -> list[Case]:
    nbytes = models.model_bytes(model_dir)
    files = models.weight_files(model_dir)
    shards = len(files) > 1
    what = f"{len(files)} shards" if shards else "one file"
    size = _size_label(nbytes)
    # issue 21: >= 1.0x on one file and on 4 shards (was >= 1.6x on shards, issue 12)
    min_ratio = 1.0
    goal_text = "no slower than model_signing (>= 1.0x)"
    d = str(model_dir)
    keys = p.signing
    sign_v = [
        Variant(
            "model_signing API sign (EC key)",
            "anchor",
            "benchmarks.ops:ms_sign_api",
            {"model": d, "key": keys["priv"], "out_dir": "$TMP"},
        ),
        Variant(
            "weightguard sign_model (EC key)",
            "weightguard",
            "benchmarks.wg_ops:sign",
            {"model": d, "key": keys["priv"], "out_dir": "$TMP"},
        ),
    ]
    verify_v = [
        Variant(
            "model_signing API verify",
            "anchor",
            "benchmarks.ops:ms_verify_api",
            {"model": d, "pub": keys["pub"], "sig": p.ms_sig.get(d, "")},
        ),
        Variant(
            "weightguard verify_bundle",
            "weightguard",
            "benchmarks.wg_ops:verify",
            {"model": d, "pub": keys["pub"], "sig": p.wg_sig.get(d, ""), "prep_error": p.error},
        ),
    ]
    if cli:
        sign_v += [
            Variant(
                "model_signing sign key (CLI)",
                "anchor",
                "benchmarks.ops:ms_sign_cli",
                {"model": d, "key": keys["priv"], "out_dir": "$TMP"},
                cli=True,
            ),
            Variant(
                "weightguard sign --key (CLI)",
                "weightguard-cli",
                "benchmarks.wg_ops:sign_cli",
                {"model": d, "key": keys["priv"], "out_dir": "$TMP"},
                cli=True,
            ),
        ]
        verify_v += [
            Variant(
                "model_signing verify key (CLI)",
                "anchor",
                "benchmarks.ops:ms_verify_cli",
                {"model": d, "pub": keys["pub"], "sig": p.ms_sig.get(d, "")},
                cli=True,
            ),
            Variant(
                "weightguard verify --key (CLI)",
                "weightguard-cli",
                "benchmarks.wg_ops:verify_cli",
                {"model": d, "pub": keys["pub"], "sig": p.wg_sig.get(d, "")},
                cli=True,
            ),
        ]
    inputs = [str(f) for f in files]
    out = []
    for kind, variants in (("sign", sign_v), ("verify", verify_v)):
        api_anchor = variants[0].label
        goals = [
            Goal(f"{kind}: {goal_text} (API)", anchor=api_anchor, min_ratio=min_ratio),
            # on a busy machine wall time is a share of the cores: CPU time judges the work
            Goal(
                f"{kind}: {goal_text} (API, CPU time)",
                anchor=api_anchor,
                min_ratio=min_ratio,
                metric="cpu_s",
            ),
        ]
        if cli:
            goals.append(
                Goal(
                    f"{kind}: {goal_text} (CLI)",
                    anchor=variants[2].label,
                    min_ratio=min_ratio,
                    wg_label=variants[3].label,
                )
            )
        out.append(
            Case(
                name=f"{kind}-{model_dir.name}",
                title=f"{kind} a {size} plain model, {what} (EC P-256 key)",
                group="signing",
                data_bytes=nbytes,
                inputs=inputs,
                reps=reps,
                variants=variants,
                goals=goals,
            )
        )
    return out


def load_cases(
    model_dir: Path,
    reps: int,
    p: prep.Prepared,
    caches: tuple[str, ...],
    device: str = "cpu",
    extras: bool = True,
) -> list[Case]:
    """Anchors + weightguard; ``extras``: also fastsafetensors and the plain verify-only
    load (no goal), which otherwise run warm only."""
    files = models.weight_files(model_dir)
    nbytes = models.model_bytes(model_dir)
    size = _size_label(nbytes)
    d = str(model_dir)
    n = prep.tensor_count(model_dir)
    tz = p.tensorizer.get(d, "")
    ct = p.cryptotensors.get(d, "")
    wg = p.wg_models.get(d, {})
    variants = [
        Variant(
            "safetensors load_file" + (" + clone" if device == "cpu" else f" (device={device})"),
            "anchor",
            "benchmarks.ops:st_load",
            {"model": d, "device": device, "clone": True, "expect": n},
        ),
        Variant(
            "tensorizer encrypted deserialize",
            "anchor",
            "benchmarks.ops:tensorizer_load",
            {"tensors_file": tz, "device": device, "expect": n},
        ),
    ]
    if device == "cpu":
        variants.append(
            Variant(
                "safetensors load_file + clone (1 thread)",
                "anchor",
                "benchmarks.ops:st_load",
                {"model": d, "device": device, "clone": True, "expect": n, "threads": 1},
            )
        )
    variants.append(
        Variant(
            "Run:ai streamer",
            "anchor",
            "benchmarks.ops:runai_load",
            {"model": d, "device": device, "expect": n},
        )
    )
    variants.append(
        Variant(
            "fastsafetensors (nogds)",
            "anchor",
            "benchmarks.ops:fastsafetensors_load",
            {"model": d, "device": device, "expect": n},
        )
    )
    if device == "cpu":
        variants.append(
            Variant(
                "CryptoTensors (encrypted + signed)",
                "anchor",
                "benchmarks.ops:cryptotensors_load",
                {"model": ct, "device": device, "expect": n},
            )
        )
    variants.append(
        Variant(
            "weightguard load_file (signed + encrypted)",
            "weightguard",
            "benchmarks.wg_ops:load",
            {
                "model": wg.get("dir", ""),
                "device": device,
                "expect": n,
                "pub": p.signing["pub"],
                "sig": wg.get("sig", ""),
                "key_uri": p.key_uri,
                "audit_dir": "$TMP",
                "prep_error": wg.get("error", p.error),
            },
        )
    )
    wg_params = variants[-1].params
    variants.append(
        Variant(
            "weightguard load_file (first call: imports in the timer)",
            "weightguard-first-call",
            "benchmarks.wg_ops:load",
            {**wg_params, "first_call": True},
        )
    )
    extra_labels = {
        "fastsafetensors (nogds)",
        "weightguard load_file (signed plain, verify only)",
        "safetensors load_file + clone (1 thread)",
    }
    variants.append(
        Variant(
            "weightguard load_file (signed plain, verify only)",
            "weightguard-plain",
            "benchmarks.wg_ops:load",
            {
                "model": d,
                "device": device,
                "expect": n,
                "pub": p.signing["pub"],
                "sig": p.wg_sig.get(d, ""),
                "key_uri": "",
                "audit_dir": "$TMP",
            },
        )
    )
    inputs = [str(f) for f in files] + ([tz] if tz else []) + ([wg["dir"]] if wg.get("dir") else [])
    inputs += [ct] if ct else []
    goals = [
        Goal(
            ">= 1.0x safetensors load_file" + (" + clone" if device == "cpu" else ""),
            anchor=variants[0].label,
            min_ratio=1.0,
        )
    ]
    if device == "cpu":
        goals += [
            Goal(
                ">= 0.9x safetensors load_file + clone, first call (imports in the timer)",
                anchor=variants[0].label,
                min_ratio=0.9,
                wg_label="weightguard load_file (first call: imports in the timer)",
            ),
            Goal(">= 2x tensorizer encrypted", anchor=variants[1].label, min_ratio=2.0),
            Goal(">= 2x Run:ai streamer", anchor="Run:ai streamer", min_ratio=2.0),
            Goal(
                ">= 1.2x CryptoTensors full load",
                anchor="CryptoTensors (encrypted + signed)",
                min_ratio=1.2,
            ),
        ]
    else:
        goals.append(
            Goal(
                "host RSS added <= staging ring (256 MiB) + 200 MB",
                max_added_rss_mib=256 + 200 / 1.048576,
            )
        )
    if not extras:
        variants = [v for v in variants if v.label not in extra_labels]
    what = f"{len(files)} shards" if len(files) > 1 else "one file"
    return [
        Case(
            name=f"load-{device.split(':')[0]}-{model_dir.name}",
            title=f"secure load to {device.upper()}: {size}, {what}",
            group=f"load-{device.split(':')[0]}",
            data_bytes=nbytes,
            inputs=inputs,
            caches=caches,
            reps=reps,
            variants=variants,
            goals=goals,
            cold_labels=tuple(v.label for v in variants if v.label not in extra_labels),
            notes=(
                "weightguard verifies the signature (EC P-256 policy), checks every chunk "
                "digest and AES-256-GCM-decrypts; safetensors/fastsafetensors check nothing; "
                "tensorizer decrypts (XSalsa20-Poly1305); CryptoTensors checks its Ed25519 "
                "header signature and AES-256-GCM-decrypts"
            ),
        )
    ]


def oms_load_cases(model_dir: Path, reps: int, p: prep.Prepared) -> list[Case]:
    """Issue 21: a plain model signed by model_signing alone (its defaults: ``files``
    serialization, SHA-256), loaded securely (every file's digest computed in the read
    that fills the tensors) against ``model_signing verify`` alone on the same files."""
    files = models.weight_files(model_dir)
    nbytes = models.model_bytes(model_dir)
    shards = len(files) > 1
    d = str(model_dir)
    sig = p.ms_sig.get(d, "")
    anchor = "model_signing API verify"
    variants = [
        Variant(
            anchor,
            "anchor",
            "benchmarks.ops:ms_verify_api",
            {"model": d, "pub": p.signing["pub"], "sig": sig},
        ),
        Variant(
            "weightguard load_file (model_signing bundle)",
            "weightguard",
            "benchmarks.wg_ops:load",
            {
                "model": d,
                "device": "cpu",
                "expect": prep.tensor_count(model_dir),
                "pub": p.signing["pub"],
                "sig": sig,
                "key_uri": "",
                "audit_dir": "$TMP",
                "prep_error": None if sig else "no model_signing bundle",
            },
        ),
    ]
    goal = (
        Goal("faster than model_signing verify alone (> 1.0x)", anchor=anchor, min_ratio=1.0)
        if shards
        else Goal(
            "<= 1.1x the time of model_signing verify alone (>= 0.91x)",
            anchor=anchor,
            min_ratio=1 / 1.1,
        )
    )
    what = f"{len(files)} shards" if shards else "one file"
    return [
        Case(
            name=f"load-oms-{model_dir.name}",
            title=f"secure load of a {_size_label(nbytes)} plain model signed by "
            f"model_signing ({what}; files, sha256) vs model_signing verify",
            group="loads",
            data_bytes=nbytes,
            inputs=[str(f) for f in files],
            reps=reps,
            variants=variants,
            goals=[goal],
        )
    ]


def s3_cases(model_dir: Path, reps: int, p: prep.Prepared) -> list[Case]:
    nbytes = models.model_bytes(model_dir)
    d = str(model_dir)
    wg = p.wg_models.get(d, {})
    n = prep.tensor_count(model_dir)
    server = prep.S3Context(model_dir, wg)
    names = [f.name for f in models.weight_files(model_dir)]
    return [
        Case(
            name=f"load-s3-{model_dir.name}",
            title=f"secure load from S3 (SeaweedFS, loopback) to CPU: {_size_label(nbytes)}",
            group="load-s3",
            data_bytes=nbytes,
            reps=reps,
            setup=lambda: server,
            variants=[
                Variant(
                    "boto3 download_fileobj + safetensors.torch.load",
                    "anchor",
                    "benchmarks.ops:boto3_st_load",
                    {"bucket": prep.S3_BUCKET, "prefix": "plain/", "names": names, "expect": n},
                ),
                Variant(
                    "weightguard load_file s3:// (signed + encrypted)",
                    "weightguard",
                    "benchmarks.wg_ops:load",
                    {
                        "model": f"s3://{prep.S3_BUCKET}/enc/",
                        "device": "cpu",
                        "expect": n,
                        "pub": p.signing["pub"],
                        "sig": wg.get("sig", ""),
                        "key_uri": p.key_uri,
                        "audit_dir": "$TMP",
                        "prep_error": wg.get("error", p.error),
                    },
                ),
            ],
            goals=[
                Goal(
                    ">= 1.0x boto3 + safetensors",
                    anchor="boto3 download_fileobj + safetensors.torch.load",
                    min_ratio=1.0,
                )
            ],
        )
    ]


def misc_cases(model_dir: Path, reps: int, p: prep.Prepared) -> list[Case]:
    nbytes = models.model_bytes(model_dir)
    return [
        Case(
            name=f"watermark-check-{model_dir.name}",
            title=f"watermark check throughput: {_size_label(nbytes)}",
            group="watermark",
            data_bytes=nbytes,
            inputs=[str(f) for f in models.weight_files(model_dir)],
            reps=reps,
            variants=[
                Variant(
                    "weightguard watermark.check",
                    "weightguard",
                    "benchmarks.wg_ops:watermark_check",
                    {
                        "model": p.watermarked.get("dir", ""),
                        "key": p.watermarked.get("key", ""),
                        "prep_error": p.watermarked.get("error"),
                    },
                )
            ],
        ),
        Case(
            name="audit-verify-100k",
            title="audit verify: 100k events, hash chain + checkpoints",
            group="audit",
            data_bytes=p.audit.get("bytes", 0),
            reps=reps,
            variants=[
                Variant(
                    "weightguard audit verify",
                    "weightguard",
                    "benchmarks.wg_ops:audit_verify",
                    {"log": p.audit.get("log", ""), "prep_error": p.audit.get("error")},
                )
            ],
        ),
        Case(
            name="audit-emit-10k",
            title="audit emit: 10k events, signed checkpoint every 1000, fsync per 64 (batch)",
            group="audit",
            data_bytes=0,
            reps=reps,
            variants=[
                Variant(
                    "weightguard AuditLog.emit x 10k",
                    "weightguard",
                    "benchmarks.wg_ops:audit_emit",
                    {"out_dir": "$TMP", "events": 10_000, "sync": "batch"},
                )
            ],
        ),
    ]


def build_cases(mode: str, sizes: list[int] | None = None) -> list[Case]:
    cfg = dict(MODES[mode])
    if sizes:
        cfg["sizes"], cfg["shard_size"] = sizes, sizes[0]
    reps: int = cfg["reps"]
    cases: list[Case] = []
    p = prep.Prepared.load_or_init()
    if mode == "gpu":
        for size in cfg["sizes"]:
            m = models.synthetic(size)
            p.prepare_signing(m, anchor=False)
            p.prepare_load(m)
            cases += load_cases(m, reps, p, ("warm",), device="cuda")
        cases += load_cases(models.synthetic(cfg["sizes"][0]), reps, p, ("warm",))
        p.save()
        return cases
    if mode == "loads":
        for size in cfg["sizes"]:
            m = models.synthetic(size)
            cases += encrypt_cases(m, reps, p, file_to_file=False)
            p.prepare_signing(m, anchor=False)
            p.prepare_load(m)
            cases += load_cases(m, reps, p, ("warm",))
        minilm = models.minilm()
        p.prepare_signing(minilm, anchor=False)
        p.prepare_load(minilm)
        cases += load_cases(minilm, reps, p, ("warm",))
        p.save()
        return cases
    if mode == "oms":
        for m in (
            models.synthetic(cfg["sizes"][0]),
            models.synthetic(cfg["shard_size"], shards=4),
        ):
            p.prepare_signing(m)
            cases += oms_load_cases(m, reps, p)
        p.save()
        return cases
    quick = mode in ("quick", "goals")
    if mode == "goals":
        m = models.synthetic(cfg["sizes"][0])
        cases += encrypt_cases(m, reps, p, file_to_file=False)
        p.prepare_signing(m)
        cases += signing_cases(m, reps, p, cli=True)
        sh = models.synthetic(cfg["shard_size"], shards=4)
        p.prepare_signing(sh)
        cases += signing_cases(sh, reps, p, cli=False)
        p.prepare_load(m)
        cases += load_cases(m, reps, p, ("warm",), extras=False)
        p.save()
        return cases
    minilm = models.minilm()
    cases += startup_cases(reps)
    for size in cfg["sizes"]:
        m = models.synthetic(size)
        cases += encrypt_cases(m, reps, p, file_to_file=not quick)
        p.prepare_signing(m)
        cases += signing_cases(m, reps, p, cli=True)
        p.prepare_load(m)
        cases += load_cases(m, reps, p, cfg["load_caches"])
    sh = models.synthetic(cfg["shard_size"], shards=4)
    p.prepare_signing(sh)
    cases += signing_cases(sh, reps, p, cli=mode == "full")
    if mode == "full":
        p.prepare_load(sh)
        cases += load_cases(sh, reps, p, ("warm",))
    p.prepare_signing(minilm)
    p.prepare_load(minilm)
    cases += load_cases(minilm, reps, p, ("warm",), extras=not quick)
    first = models.synthetic(cfg["sizes"][0])
    cases += s3_cases(first, reps, p)
    p.prepare_watermark(minilm)
    p.prepare_audit(100_000)
    cases += misc_cases(minilm, 2 if quick else reps, p)
    p.save()
    return cases


def _micro(suites_gb: int = 0) -> dict[str, Any]:
    """Per-core primitive ceilings (AES-GCM, SHA-256, memcpy, page-cache read); with
    ``suites_gb`` also the cipher-suite comparison (``--loads``)."""
    import subprocess

    extra = ["--suites", str(suites_gb)] if suites_gb else []
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.micro", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        micro: dict[str, Any] = json.loads(p.stdout)
    except ValueError:
        return {"error": p.stderr[-500:]}
    _log(
        "micro (GB/s per core): "
        + ", ".join(f"{k} {v:.2f}" for k, v in micro.items() if isinstance(v, float))
    )
    return micro


def _watermark_null() -> dict[str, Any] | None:
    """``--full`` only: the watermark engineer's long null-distribution run
    (``benchmarks/watermark_null.py``), output kept with the results."""
    import subprocess

    if not (Path(__file__).parent / "watermark_null.py").exists():
        return None
    _log("== watermark null distribution (benchmarks/watermark_null.py)")
    t0 = time.time()
    js = WORK / "watermark_null.json"
    js.unlink(missing_ok=True)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "benchmarks.watermark_null", "--json", str(js)],
            capture_output=True,
            text=True,
            timeout=3 * 3600,
        )
        rc, tail = p.returncode, (p.stdout + p.stderr)[-6000:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, "timed out after 3 h"
    _log(f"   exit {rc} after {time.time() - t0:.0f} s")
    data = json.loads(js.read_text()) if js.exists() else None
    return {"returncode": rc, "seconds": time.time() - t0, "output_tail": tail, "data": data}


@contextlib.contextmanager
def _tmp_root() -> Iterator[Path]:
    root = WORK / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="weightguard benchmarks against the anchors")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_true", help="~5 min on 2 cores (make bench)")
    g.add_argument("--full", action="store_true", help="1 GiB and 4 GiB models")
    g.add_argument("--gpu", action="store_true", help="CUDA loads (needs an NVIDIA GPU)")
    g.add_argument("--goals", action="store_true", help="goal cases on the 1 GiB model")
    g.add_argument(
        "--loads", action="store_true", help="issue 17: the three models, 7 reps (make bench-loads)"
    )
    g.add_argument(
        "--oms",
        action="store_true",
        help="issue 21: load of a model_signing-signed model vs model_signing verify",
    )
    ap.add_argument("--only", default="", help="comma-separated substrings of case names")
    ap.add_argument("--reps", type=int, default=0, help="override the repetitions")
    ap.add_argument("--out", default="", help="result file (default benchmarks/results/...)")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite README table")
    ap.add_argument("--sizes", default="", help="model sizes in MiB, e.g. 256,1024")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="prepare and list the cases without timing anything (--gpu works without CUDA)",
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="add the cases to the newest result of this mode (runs split with --only)",
    )
    args = ap.parse_args(argv)
    mode = next(m for m in ("quick", "full", "gpu", "goals", "loads", "oms") if getattr(args, m))
    if mode == "gpu" and not args.dry_run:
        err = prep.cuda_problem()
        if err:
            print(f"error: --gpu needs CUDA: {err}", file=sys.stderr)
            return 2
    t0 = time.time()
    cases = build_cases(mode, [int(x) for x in args.sizes.split(",") if x])
    if args.only:
        words = [w for w in args.only.split(",") if w]
        cases = [c for c in cases if any(w in c.name for w in words)]
    if args.dry_run:
        for c in cases:
            _log(f"{c.name}: {c.title} [{', '.join(c.caches)}; {c.reps} reps]")
            for v in c.variants:
                _log(f"   {v.side:17} {v.label}  ({v.op})")
            for goal in c.goals:
                _log(f"   goal: {goal.text}")
        return 0
    if args.reps:
        for c in cases:
            c.reps = args.reps
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) if args.out else RESULTS / f"{mode}-{stamp}.json"
    previous = sorted(RESULTS.glob(f"{mode}-*.json"))
    if args.append and previous:
        out = previous[-1]
        result: dict[str, Any] = json.loads(out.read_text())
        names = {c.name for c in cases}
        result["cases"] = [c for c in result["cases"] if c["name"] not in names]
        result["meta"].setdefault("appended", []).append(run_meta(mode))
    else:
        result = {
            "meta": run_meta(mode),
            "micro": _micro(8 if mode == "loads" else 0),
            "cases": [],
        }
    with _tmp_root() as tmp:
        for c in cases:
            try:
                result["cases"].append(run_case(c, tmp, _log))
            except Exception as exc:  # one broken case must not lose the others
                _log(f"   case {c.name} failed: {exc}")
                result["cases"].append(
                    {
                        "name": c.name,
                        "title": c.title,
                        "group": c.group,
                        "error": str(exc),
                        "traceback": traceback.format_exc()[-3000:],
                        "caches": {},
                    }
                )
            result["meta"]["elapsed_s"] = time.time() - t0
            out.write_text(json.dumps(result, indent=1, default=str))
    if mode == "full" and not args.only:
        result["watermark_null"] = _watermark_null()
        out.write_text(json.dumps(result, indent=1, default=str))
    _log(f"results: {out} ({time.time() - t0:.0f} s)")
    if not args.no_report:
        from benchmarks import report

        report.main([])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
