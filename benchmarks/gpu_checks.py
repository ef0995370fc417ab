"""The GPU run's own checks (``bash benchmarks/gpu.sh run``), one JSON object on stdout.

``preflight``: import every runtime dependency (the GPU image has torch + triton only;
the rest travels as wheels) and say which are missing -- before anything is timed.
``kernel``: the AES-256-CTR kernel's GB/s against a pinned H2D copy of the same bytes,
after checking its output against ``cryptography``; and a secure CUDA load with
``decrypt_on="gpu"`` vs ``"cpu"`` vs ``safetensors.torch.load_file(device="cuda")``.
``--dry-run`` runs the same code on the CPU (Triton interpreter, tiny sizes) so the
script is known to work before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Any

RUNTIME = [
    "torch",
    "triton",
    "numpy",
    "safetensors",
    "cryptography",
    "blake3",
    "click",
    "hvac",
    "boto3",
    "botocore",
    "sigstore",
    "scipy",
    "pytest",
    "hypothesis",
]


def preflight() -> dict[str, Any]:
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    import importlib.metadata as md

    for name in RUNTIME:
        try:
            importlib.import_module(name)
            try:
                found[name] = md.version(name)
            except md.PackageNotFoundError:
                found[name] = "?"
        except Exception as exc:  # reported; the run stops
            missing[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return {"found": found, "missing": missing}


def _time(fn: Any, sync: Any, reps: int) -> float:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def kernel(mib: int, dry: bool) -> dict[str, Any]:
    import torch
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from weightguard._internal.devices import aes_ctr_triton as aes

    dev = torch.device("cpu" if dry else "cuda")
    sync = (lambda: None) if dry else torch.cuda.synchronize
    n = mib << 20
    key, nonce = os.urandom(32), os.urandom(12)
    pt = os.urandom(min(n, 1 << 20))
    ct = AESGCM(key).encrypt(nonce, pt, b"")[:-16]
    j0 = nonce + b"\x00\x00\x00\x01"
    words = [int.from_bytes(j0[i : i + 4], "big") for i in range(0, 16, 4)]
    ctr = torch.tensor(words, dtype=torch.int64).to(torch.uint32).to(dev)
    rk = torch.tensor(aes.expand_key(key), dtype=torch.int64).to(torch.uint32).to(dev)
    tabs = aes.tables(dev)
    check = torch.frombuffer(bytearray(ct), dtype=torch.uint8).to(dev)
    aes.ctr_decrypt(check, ctr, rk, tabs)
    sync()
    correct = bytes(check.cpu().numpy()) == pt
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, device=dev)
    reps = 1 if dry else 10
    t_kernel = _time(lambda: aes.ctr_decrypt(data, ctr, rk, tabs), sync, reps)
    out: dict[str, Any] = {"bytes": n, "correct": correct, "kernel_gbps": n / t_kernel / 1e9}
    if not dry:
        host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(n, dtype=torch.uint8, device=dev)
        t_h2d = _time(lambda: dst.copy_(host, non_blocking=True), sync, reps)
        out["h2d_gbps"] = n / t_h2d / 1e9
        out["kernel_over_h2d"] = out["kernel_gbps"] / out["h2d_gbps"]
    return out


def load(mib: int, dry: bool, tmp: str) -> dict[str, Any]:
    """Secure load of an encrypted, signed file: GPU vs CPU decryption vs safetensors."""
    import torch
    from safetensors.torch import load_file as st_load
    from safetensors.torch import save_file

    from weightguard import crypt, loader
    from weightguard._internal.keys.providers import create_key_file
    from weightguard.audit import AuditLog, MemorySink
    from weightguard.policy import UnsafeNoVerification

    device = "cpu" if dry else "cuda"
    plain = os.path.join(tmp, "plain.safetensors")
    enc = os.path.join(tmp, "enc.safetensors")
    per = max(1, (mib << 20) // (4 * 1024 * 1024))
    side = 128 if dry else 1024  # the interpreter decrypts ~100 KB/s
    tensors = {f"w{i}": torch.randn(side, 1024) for i in range(per)}
    save_file(tensors, plain)
    kek = os.path.join(tmp, "kek.hex")
    create_key_file(kek)
    crypt.encrypt_file(plain, enc, f"file://{kek}", context="gpu-bench")
    sync = (lambda: None) if dry else torch.cuda.synchronize
    res: dict[str, Any] = {"bytes": os.path.getsize(plain)}
    sink = MemorySink()
    audit = AuditLog(sink)
    kinds = ["gpu"] if dry else ["gpu", "cpu"]
    for kind in kinds:
        dev = "fake" if dry else device

        def run(kind: str = kind, dev: str = dev) -> None:
            out = loader.load_file(
                enc, dev, policy=UnsafeNoVerification(), audit=audit, decrypt_on=kind
            )
            del out

        res[f"weightguard_decrypt_{kind}_s"] = _time(run, sync, 1 if dry else 3)
    if not dry:
        res["safetensors_s"] = _time(lambda: st_load(plain, device="cuda"), sync, 3)
        res["gpu_decrypt_vs_safetensors"] = res["safetensors_s"] / res["weightguard_decrypt_gpu_s"]
    ok = [r for r in sink.records if r.get("event") == "load.ok"]
    res["load_ok_extra"] = ok[-1].get("extra") if ok else None
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["preflight", "kernel"])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    if args.what == "preflight":
        r = preflight()
        print(json.dumps(r))
        return 3 if r["missing"] else 0
    import tempfile

    if args.dry_run:
        sys.path.insert(0, os.getcwd())
        import tests.support.fake_device  # noqa: F401 - the fake GPU for the dry run
    with tempfile.TemporaryDirectory() as tmp:
        mib = 1 if args.dry_run else args.mib
        out = {"kernel": kernel(mib, args.dry_run), "load": load(mib, args.dry_run, tmp)}
    print(json.dumps(out))
    return 0 if out["kernel"]["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
