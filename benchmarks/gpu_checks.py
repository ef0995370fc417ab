"""The GPU run (``bash benchmarks/gpu.sh run``): every step bounded, one JSON result
rewritten after every step, so a run cut short still says what it saw.

``python -m benchmarks.gpu_checks run [--dry-run] --out DIR`` runs the steps in order,
each in its own process with its own time cap, all inside one deadline (8 minutes on
the GPU machine, 3 on a CPU for ``--dry-run``), and writes ``DIR/result.json``:

  env              Python version, pip, a C compiler, Python.h (a test compile), torch/CUDA;
                   a JSON verdict and a stop when something the run needs is missing
  install          only the wheels the run imports that the machine lacks (cryptography,
                   cffi, pycparser, blake3), with pip --no-index --find-links, or by
                   unpacking the wheels when pip is absent
  kernel_fips197   step 0: compile the AES-CTR kernel and launch it once on FIPS-197 C.3
  kernel           kernel GB/s (both table variants, then block counts) vs pinned H2D
  probes           alignment probes: a 3-byte U8 tensor, then an fp8 matrix and a bf16
                   bias, all 256-byte aligned, then a GEMM with them
  pytest_cuda      pytest -m cuda tests/load/test_cuda.py
  load_1g, load_8g secure load to CUDA (decrypt_on gpu and cpu) vs
                   safetensors.torch.load_file(device="cuda"), each in a fresh process,
                   with its host peak RSS

``--dry-run`` runs the same steps on a CPU machine: the fake device
(tests/support/fake_device.py), Triton's interpreter, small sizes, the same JSON.
Only the standard library is used until the install step has run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "weightguard-gpu-run/1"
# What the run imports that the GPU image may lack (its package list has numpy,
# safetensors, pytest, triton and torch): distribution -> (import name, minimum version)
NEEDED = {
    "cryptography": ("cryptography", "43"),
    "cffi": ("cffi", "1.14"),
    "pycparser": ("pycparser", "2.0"),
    "blake3": ("blake3", "1.0"),
}
MIN_PYTHON = (3, 11)  # weightguard's requires-python
WHEEL_BUDGET = 40 << 20

# (name, cap in seconds on the GPU machine, cap for --dry-run)
STEPS: list[tuple[str, int, int]] = [
    ("env", 30, 30),
    ("install", 60, 20),
    ("kernel_fips197", 120, 30),
    ("kernel", 75, 30),
    ("probes", 60, 30),
    ("pytest_cuda", 150, 45),
    ("load_1g", 90, 40),
    ("load_8g", 180, 40),
]
DEADLINE = {"run": 470, "dry-run": 170}  # whole run, seconds (< 8 min and < 3 min)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- env (stdlib)


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for p in v.split("."):
        digits = "".join(c for c in p if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def env_check(dry: bool) -> dict[str, Any]:
    """What the run needs from the machine itself; ``missing`` lists what blocks it."""
    res: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "missing": [],
    }
    if sys.version_info[:2] < MIN_PYTHON:
        res["missing"].append(
            f"python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (weightguard's requires-python; "
            f"this is {res['python']})"
        )
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, timeout=30
    )
    res["pip"] = pip.stdout.split(" from ")[0].strip() if pip.returncode == 0 else None
    cc_env = os.environ.get("CC")
    cands = [cc_env] if cc_env else ["cc", "gcc", "clang"]
    cc = next((shutil.which(c) for c in cands if shutil.which(c)), None)
    res["cc"] = cc
    inc = sysconfig.get_paths().get("include") or ""
    res["python_h"] = os.path.join(inc, "Python.h")
    if not cc:
        res["missing"].append("a C compiler (cc/gcc/clang or $CC): Triton builds its launcher")
    if not os.path.exists(res["python_h"]):
        res["missing"].append(f"Python.h (not in {inc}): install the Python headers")
    elif cc:
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "t.c")
            with open(src, "w") as f:
                f.write("#include <Python.h>\nint wg_probe(void) { return Py_IsInitialized(); }\n")
            p = subprocess.run(
                [cc, "-c", "-fPIC", f"-I{inc}", src, "-o", os.path.join(d, "t.o")],
                capture_output=True,
                text=True,
                timeout=60,
            )
            res["test_compile"] = "ok" if p.returncode == 0 else p.stderr.strip()[-500:]
            if p.returncode != 0:
                res["missing"].append("a C compiler that builds against Python.h (test compile)")
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        res["gpu"] = q.stdout.strip() or q.stderr.strip()[-200:]
    res["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    torch_q = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, torch; print(json.dumps({'torch': torch.__version__, "
            "'cuda': torch.cuda.is_available(), 'cuda_version': torch.version.cuda}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if torch_q.returncode == 0:
        res.update(json.loads(torch_q.stdout.strip().splitlines()[-1]))
    else:
        res["torch"] = None
        res["missing"].append("torch (the image's python3 should hold it)")
    if not dry and not res.get("cuda"):
        res["missing"].append("CUDA: torch sees no GPU")
    for mod in ("triton", "numpy", "safetensors", "pytest"):
        q = subprocess.run(
            [sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        res[mod] = q.stdout.strip() if q.returncode == 0 else None
        if q.returncode != 0:
            res["missing"].append(f"{mod} (expected in the GPU image)")
    return res


# --------------------------------------------------------------------------- install (stdlib)


def _wheel_tags(name: str) -> tuple[str, list[str], list[str], list[str]]:
    """(distribution, python tags, abi tags, platform tags) of a wheel file name."""
    parts = name[: -len(".whl")].split("-")
    dist, py, abi, plat = parts[0], parts[-3], parts[-2], parts[-1]
    return dist.lower().replace("_", "-"), py.split("."), abi.split("."), plat.split(".")


def wheel_fits(name: str, version: tuple[int, int] | None = None) -> bool:
    """Whether a wheel installs on this interpreter (CPython x86_64 Linux)."""
    major, minor = version or sys.version_info[:2]
    _, pys, abis, plats = _wheel_tags(name)
    me = f"cp{major}{minor}"
    plat_ok = any(p == "any" or p.endswith("x86_64") for p in plats)
    if not plat_ok:
        return False
    for py in pys:
        if py in ("py3", f"py{major}{minor}") and "none" in abis:
            return True
        if py == me and (me in abis or "abi3" in abis or "none" in abis):
            return True
        if "abi3" in abis and py.startswith("cp3") and py[3:].isdigit() and int(py[3:]) <= minor:
            return True
    return False


def _missing_dists() -> list[str]:
    import importlib.metadata as md

    out = []
    for dist, (_, least) in NEEDED.items():
        try:
            have = md.version(dist)
        except md.PackageNotFoundError:
            out.append(dist)
            continue
        if _version_tuple(have) < _version_tuple(least):
            out.append(dist)
    return out


def install(wheels: Path, site: Path, *, use_pip: bool) -> dict[str, Any]:
    """Install the missing distributions from ``wheels`` into ``site`` (no network)."""
    res: dict[str, Any] = {"wheels": str(wheels), "site": str(site)}
    files = sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    res["wheel_bytes"] = sum((wheels / f).stat().st_size for f in files)
    if res["wheel_bytes"] > WHEEL_BUDGET:
        res["warning"] = f"wheel set {res['wheel_bytes']} bytes > {WHEEL_BUDGET}"
    need = _missing_dists()
    res["needed"] = need
    if not need:
        res["installed"] = []
        return res
    if not files:
        raise RuntimeError(f"missing {', '.join(need)} and no wheels in {wheels}")
    site.mkdir(parents=True, exist_ok=True)
    if use_pip:
        cmd = [
            sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
            "--no-compile", "--no-cache-dir", "--upgrade", "--find-links", str(wheels),
            "--target", str(site), *need,
        ]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"pip install failed: {p.stderr.strip()[-800:]}")
        res["via"] = "pip"
        res["installed"] = need
        return res
    chosen = []
    for dist in need:
        cands = [f for f in files if _wheel_tags(f)[0] == dist and wheel_fits(f)]
        if not cands:
            raise RuntimeError(
                f"no wheel of {dist} for cp{sys.version_info[0]}{sys.version_info[1]}"
            )
        chosen.append(sorted(cands)[-1])
    for f in chosen:
        with zipfile.ZipFile(wheels / f) as z:
            z.extractall(site)
    res["via"] = "unzip"
    res["installed"] = chosen
    return res


# --------------------------------------------------------------------------- steps (torch)


def _dev(dry: bool) -> str:
    return "fake" if dry else "cuda:0"


def _sync(dry: bool) -> Any:
    if dry:
        return lambda: None
    import torch

    return torch.cuda.synchronize


def _setup(dry: bool) -> None:
    sys.path.insert(0, str(ROOT))
    if dry:
        os.environ["TRITON_INTERPRET"] = "1"
        import tests.support.fake_device  # noqa: F401 - registers device "fake"


def step_kernel_fips197(dry: bool) -> dict[str, Any]:
    import triton

    from weightguard._internal.devices import aes_ctr_triton as aes

    t = time.perf_counter()
    why = aes.warm_up(None if dry else 0)
    return {
        "ok": why is None,
        "reason": why,
        "compile_and_launch_s": time.perf_counter() - t,
        "triton": triton.__version__,
        "table_mode": aes.table_mode(),
    }


def _time(fn: Any, sync: Any, reps: int) -> float:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def step_kernel(dry: bool, budget: float) -> dict[str, Any]:
    import torch
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from weightguard._internal.devices import aes_ctr_triton as aes

    t_end = time.monotonic() + budget - 5
    dev = torch.device("cpu" if dry else "cuda:0")
    sync = _sync(dry)
    n = (256 << 10) if dry else (1 << 30)
    reps = 1 if dry else 10
    key, nonce = os.urandom(32), os.urandom(12)
    pt = os.urandom(min(n, 1 << 20) if not dry else 4096)
    ct = AESGCM(key).encrypt(nonce, pt, b"")[:-16]
    j0 = nonce + b"\x00\x00\x00\x01"
    words = [int.from_bytes(j0[i : i + 4], "big") for i in range(0, 16, 4)]
    ctr = torch.tensor(words, dtype=torch.int64).to(torch.uint32).to(dev)
    rk = torch.tensor(aes.expand_key(key), dtype=torch.int64).to(torch.uint32).to(dev)
    tabs = aes.tables(dev)
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, device=dev)
    out: dict[str, Any] = {"bytes": n, "variants": []}
    if not dry:
        host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(n, dtype=torch.uint8, device=dev)
        out["h2d_pinned_gbps"] = (
            n / _time(lambda: dst.copy_(host, non_blocking=True), sync, 5) / 1e9
        )
        out["d2d_gbps"] = 2 * n / _time(lambda: dst.copy_(data), sync, 5) / 1e9  # read+write
        del host, dst
    combos = [(m, aes.BLOCKS_PER_PROGRAM) for m in aes.TABLE_MODES]
    default_blocks = aes.BLOCKS_PER_PROGRAM
    tried = 0
    while combos and time.monotonic() < t_end:
        mode, blocks = combos.pop(0)
        os.environ["WEIGHTGUARD_AES_TABLES"] = mode
        aes.BLOCKS_PER_PROGRAM = blocks
        check = torch.frombuffer(bytearray(ct), dtype=torch.uint8).to(dev)
        t0 = time.perf_counter()
        aes.ctr_decrypt(check, ctr, rk, tabs)
        sync()
        first = time.perf_counter() - t0
        correct = bytes(check.cpu().numpy()) == pt
        sec = _time(lambda: aes.ctr_decrypt(data, ctr, rk, tabs), sync, reps)
        v = {
            "tables": mode,
            "blocks_per_program": blocks,
            "correct": correct,
            "first_launch_s": first,
            "gbps": n / sec / 1e9,
        }
        if "h2d_pinned_gbps" in out:
            v["over_h2d"] = v["gbps"] / out["h2d_pinned_gbps"]
        out["variants"].append(v)
        tried += 1
        if tried == len(aes.TABLE_MODES) and not dry:  # then block counts for the better one
            best = max(out["variants"], key=lambda x: x["gbps"])["tables"]
            combos += [(best, b) for b in (256, 1024)]  # 2048 would spill registers
    aes.BLOCKS_PER_PROGRAM = default_blocks
    ok = [v for v in out["variants"] if v["correct"]]
    out["all_correct"] = bool(out["variants"]) and len(ok) == len(out["variants"])
    if ok:
        best = max(ok, key=lambda x: x["gbps"])
        out["best"] = best
        out["kernel_gbps"] = best["gbps"]
        if "h2d_pinned_gbps" in out:
            out["kernel_over_h2d"] = best["gbps"] / out["h2d_pinned_gbps"]
    return out


def _keys(tmp: str) -> tuple[str, Any, Any]:
    """A dev key file (allowed explicitly, as a caller must) and an EC signing key pair."""
    from tests.support.load import make_sign_keys
    from weightguard._internal.keys.providers import create_key_file

    kek = os.path.join(tmp, "kek.hex")
    create_key_file(kek)
    uri = f"file://{kek}"
    os.environ["WEIGHTGUARD_ALLOW_KEY"] = uri
    os.environ["WEIGHTGUARD_QUIET_KEYFILE"] = "1"
    keys = make_sign_keys(Path(tmp), "bench")
    return uri, keys.signer(), keys.policy()


def step_probes(dry: bool) -> dict[str, Any]:
    """3-byte U8, then an fp8 matrix and a bf16 bias (256-aligned on the device), then
    a GEMM: each probe reported on its own."""
    import struct

    import torch

    from weightguard import crypt, loader
    from weightguard.audit import AuditLog, MemorySink
    from weightguard.signing import sign_model

    res: dict[str, Any] = {}
    fp8 = getattr(torch, "float8_e4m3fn", None)
    with tempfile.TemporaryDirectory() as tmp:
        uri, signer, policy = _keys(tmp)
        g = torch.Generator().manual_seed(0)
        w = torch.randn(64, 32, generator=g)
        w8 = w.to(fp8) if fp8 is not None else None
        bias = torch.randn(64, generator=g).to(torch.bfloat16)
        items = [("odd", "U8", [3], b"abc")]
        if w8 is not None:
            items.append(("w", "F8_E4M3", [64, 32], w8.view(torch.uint8).numpy().tobytes()))
        items.append(("bias", "BF16", [64], bias.view(torch.uint8).numpy().tobytes()))
        hdr: dict[str, Any] = {}
        off = 0
        for name, dt, shape, raw in items:
            hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
            off += len(raw)
        hj = json.dumps(hdr).encode()
        plain = os.path.join(tmp, "probe.safetensors")
        with open(plain, "wb") as f:
            f.write(struct.pack("<Q", len(hj)) + hj + b"".join(r for *_, r in items))
        d = os.path.join(tmp, "enc")
        os.mkdir(d)
        enc = os.path.join(d, "probe.safetensors")
        crypt.encrypt_file(plain, enc, uri, context="probe", chunk_size=4096)
        sign_model(enc, enc + ".sig", signer, chunk_size=4096)
        sink = MemorySink()
        got = loader.load_file(
            enc, _dev(dry), policy=policy, audit=AuditLog(sink), decrypt_on="auto"
        )
        res["u8_3_bytes"] = {
            "ok": bytes(got["odd"].cpu().numpy()) == b"abc",
            "aligned_256": got["odd"].data_ptr() % 256 == 0,
        }
        if w8 is not None:
            res["fp8_matrix_bf16_bias"] = {
                "ok": torch.equal(got["w"].view(torch.uint8).cpu(), w8.view(torch.uint8))
                and torch.equal(got["bias"].view(torch.uint8).cpu(), bias.view(torch.uint8)),
                "aligned_256": got["w"].data_ptr() % 256 == 0 and got["bias"].data_ptr() % 256 == 0,
            }
        else:
            res["fp8_matrix_bf16_bias"] = {"ok": None, "why": "torch without float8"}
        try:
            if dry or w8 is None:  # CPU: the same product in float (no _scaled_mm here)
                x = torch.randn(16, 32, generator=g)
                y = (x @ got["w"].float().t()).to(torch.bfloat16) + got["bias"]
                ref = (x @ w8.float().t()).to(torch.bfloat16) + bias if w8 is not None else y
                res["gemm"] = {"ok": bool(torch.equal(y, ref)), "kind": "float matmul (CPU)"}
            else:
                x = torch.randn(16, 32, device="cuda").to(fp8)
                one = torch.ones((), device="cuda")
                y = torch._scaled_mm(
                    x, got["w"].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16
                )
                y = y + got["bias"]
                ref = (x.float() @ got["w"].float().t()).to(torch.bfloat16) + got["bias"]
                res["gemm"] = {
                    "ok": bool(torch.allclose(y.float(), ref.float(), atol=0.5, rtol=0.05)),
                    "kind": "torch._scaled_mm fp8 -> bf16 + bias",
                }
        except Exception as exc:
            res["gemm"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        res["load_ok_extra"] = [r.get("extra") for r in sink.records if r.get("event") == "load.ok"]
    res["ok"] = all(v.get("ok") is not False for v in res.values() if isinstance(v, dict))
    return res


def step_pytest(dry: bool, budget: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
            "-o", "addopts=", "-o", "timeout=0", f"--junitxml={xml}", "tests/load/test_cuda.py",
        ]  # fmt: skip
        try:
            p = subprocess.run(
                cmd, capture_output=True, text=True, timeout=max(5, budget - 5), cwd=ROOT
            )
            rc, text = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as exc:
            rc, text = 124, (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else ""
        res: dict[str, Any] = {"rc": rc, "tail": text[-3000:]}
        if os.path.exists(xml):
            import xml.etree.ElementTree as ET

            cases = []
            for c in ET.parse(xml).getroot().iter("testcase"):
                outcome = "passed"
                for tag in ("failure", "error", "skipped"):
                    el = c.find(tag)
                    if el is not None:
                        outcome = tag
                        msg = (el.get("message") or "")[:300]
                        break
                else:
                    msg = ""
                cases.append(
                    {"name": c.get("name"), "outcome": outcome, "s": float(c.get("time") or 0)}
                    | ({"message": msg} if msg else {})
                )
            res["cases"] = cases
            res["counts"] = {
                k: sum(1 for c in cases if c["outcome"] == k)
                for k in ("passed", "failure", "error", "skipped")
            }
    res["ok"] = rc in (0, 5) or (dry and rc == 0)
    return res


def _make_model(tmp: str, nbytes: int, uri: str, signer: Any, dry: bool) -> tuple[str, str]:
    """A plain safetensors file of about ``nbytes`` (bf16 matrices of 64 MiB, or small)
    and its encrypted, signed copy."""
    import torch
    from safetensors.torch import save_file

    from weightguard import crypt
    from weightguard.signing import sign_model

    per = (64 << 20) if nbytes >= (256 << 20) else max(4096, nbytes // 8)
    count = max(1, nbytes // per)
    cols = 4096 if per >= (1 << 20) else 64
    rows = per // 2 // cols
    g = torch.Generator().manual_seed(1)
    base = torch.randn(rows, cols, generator=g).to(torch.bfloat16)
    tensors = {f"layer{i:03d}.weight": base + i for i in range(count)}
    tensors["odd.bias"] = torch.randn(333, generator=g).to(torch.bfloat16)
    plain = os.path.join(tmp, "plain.safetensors")
    save_file(tensors, plain)
    del tensors
    d = os.path.join(tmp, "enc")
    os.makedirs(d, exist_ok=True)
    enc = os.path.join(d, "model.safetensors")
    chunk = (4 << 20) if not dry else (64 << 10)
    crypt.encrypt_file(plain, enc, uri, context="gpu-bench", chunk_size=chunk)
    sign_model(enc, enc + ".sig", signer, chunk_size=chunk)
    return plain, enc


_MEASURE = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
what, path, device, sig_pub = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[6]
dry = sys.argv[5] == "1"
if dry:
    os.environ["TRITON_INTERPRET"] = "1"
    import tests.support.fake_device  # noqa
import torch
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None
sync = (lambda: None) if dry else torch.cuda.synchronize
if not dry:
    torch.zeros(1, device=device); sync()   # CUDA context outside the measurement
from weightguard import loader
from weightguard.audit import AuditLog, MemorySink
from weightguard.policy import PublicKey
from safetensors.torch import load_file
policy = PublicKey.from_file(sig_pub)
sink = MemorySink()
def run():
    if what == "safetensors":
        return load_file(path, device=("cpu" if dry else device))
    return loader.load_file(path, device, policy=policy, audit=AuditLog(sink), decrypt_on=what)
import threading
page = os.sysconf("SC_PAGE_SIZE")
def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
class Sampler:  # host RSS every 2 ms while a load runs (VmHWM cannot be reset everywhere)
    def __init__(self):
        self.peak, self.stop = 0, threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
    def loop(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_now()); time.sleep(0.002)
    def __enter__(self):
        self.base = rss_now(); self.peak = self.base; self.t.start(); return self
    def __exit__(self, *a):
        self.stop.set(); self.t.join(); self.peak = max(self.peak, rss_now())
rss0, hwm0 = status("VmRSS"), status("VmHWM")
times, growth = [], []
for _ in range(2):
    with Sampler() as smp:
        t = time.perf_counter(); out = run(); sync(); times.append(time.perf_counter() - t)
    growth.append(smp.peak - smp.base)
    nbytes = sum(v.numel() * v.element_size() for v in out.values())
    check = float(sum(v.float().sum().item() for k, v in out.items() if k.startswith("layer00")))
    del out
    if not dry:
        torch.cuda.empty_cache()
ok = [r for r in sink.records if r.get("event") == "load.ok"]
ring = 0
from weightguard._internal.devices import pinned
print(json.dumps({
    "what": what, "first_s": times[0], "second_s": times[1], "bytes": nbytes,
    "rss_before": rss0, "hwm_before": hwm0, "hwm_after": status("VmHWM"),
    "hwm_growth": (status("VmHWM") or 0) - (rss0 or 0),
    "peak_growth_first": growth[0], "peak_growth": growth[1],
    "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "pinned_kept": pinned.pinned_bytes(), "checksum": check,
    "load_ok_extra": ok[-1].get("extra") if ok else None,
}))
"""


def step_load(dry: bool, nbytes: int, budget: float) -> dict[str, Any]:
    t_end = time.monotonic() + budget - 3
    res: dict[str, Any] = {"requested_bytes": nbytes}
    with tempfile.TemporaryDirectory(dir=os.environ.get("WG_GPU_TMP")) as tmp:
        uri, signer, _ = _keys(tmp)
        t = time.perf_counter()
        plain, enc = _make_model(tmp, nbytes, uri, signer, dry)
        res["prepare_s"] = time.perf_counter() - t
        res["file_bytes"] = os.path.getsize(plain)
        pub = os.path.join(tmp, "bench.pub")
        dev = _dev(dry)
        order = ["gpu", "safetensors"] if dry else ["gpu", "safetensors", "cpu"]
        for what in order:
            left = t_end - time.monotonic()
            if left < 5:
                res[what] = {"skipped": "out of time"}
                continue
            path = plain if what == "safetensors" else enc
            cmd = [
                sys.executable,
                "-c",
                _MEASURE,
                str(ROOT),
                what,
                path,
                dev,
                "1" if dry else "0",
                pub,
            ]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                res[what] = {"error": f"timed out after {left:.0f} s"}
                continue
            if p.returncode != 0:
                res[what] = {"error": p.stderr.strip()[-1500:]}
            else:
                res[what] = json.loads(p.stdout.strip().splitlines()[-1])
            print(json.dumps(res), flush=True)  # partial result: kept if the step is cut
    st, wg = res.get("safetensors", {}), res.get("gpu", {})
    if "second_s" in st and "second_s" in wg:
        res["secure_gpu_vs_safetensors"] = st["second_s"] / wg["second_s"]
        res["checksums_equal"] = st.get("checksum") == wg.get("checksum")
    if "second_s" in st and "second_s" in res.get("cpu", {}):
        res["secure_cpu_vs_safetensors"] = st["second_s"] / res["cpu"]["second_s"]
    res["ok"] = all("error" not in v for v in res.values() if isinstance(v, dict)) and res.get(
        "checksums_equal", True
    )
    return res


def run_step(name: str, dry: bool, budget: float) -> dict[str, Any]:
    if name == "env":
        return env_check(dry)
    _setup(dry)
    if name == "kernel_fips197":
        return step_kernel_fips197(dry)
    if name == "kernel":
        return step_kernel(dry, budget)
    if name == "probes":
        return step_probes(dry)
    if name == "pytest_cuda":
        return step_pytest(dry, budget)
    if name == "load_1g":
        return step_load(dry, (256 << 10) if dry else (1 << 30), budget)
    if name == "load_8g":
        return step_load(dry, (512 << 10) if dry else (8 << 30), budget)
    raise SystemExit(f"unknown step {name!r}")


# --------------------------------------------------------------------------- orchestration


def _goals(steps: dict[str, Any], dry: bool) -> dict[str, Any]:
    """The issue's goals, from a real run only (dry-run figures mean nothing)."""
    g: dict[str, Any] = {}
    if dry:
        return g
    k = steps.get("kernel", {}).get("result") or {}
    if "kernel_over_h2d" in k:
        g["kernel_over_h2d>=2"] = k["kernel_over_h2d"] >= 2
        g["kernel_gbps>=100"] = k["kernel_gbps"] >= 100
    for s in ("load_1g", "load_8g"):
        r = steps.get(s, {}).get("result") or {}
        if "secure_gpu_vs_safetensors" in r:
            g[f"{s}: secure gpu >= 1.0x safetensors"] = r["secure_gpu_vs_safetensors"] >= 1.0
    r8 = (steps.get("load_8g", {}).get("result") or {}).get("gpu") or {}
    if "peak_growth" in r8:
        ring = 256 << 20
        g["load_8g: host peak growth <= ring + 200 MB"] = r8["peak_growth"] <= ring + 200_000_000
    return g


def orchestrate(dry: bool, out_dir: Path, wheels: Path, site: Path) -> int:
    mode = "dry-run" if dry else "run"
    t0 = time.monotonic()
    deadline = t0 + DEADLINE[mode]
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": mode,
        "started": _now(),
        "deadline_s": DEADLINE[mode],
        "verdict": "running",
        "steps": {},
    }
    out_dir.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        doc["updated"] = _now()
        doc["elapsed_s"] = round(time.monotonic() - t0, 1)
        doc["goals"] = _goals(doc["steps"], dry)
        text = json.dumps(doc, indent=1, default=str) + "\n"
        tmp = out_dir / "result.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / "result.json")

    env_py = dict(os.environ)
    env_py["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(ROOT), str(ROOT / "cli"), env_py.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env_py["PYTHONUNBUFFERED"] = "1"
    env_py["WEIGHTGUARD_QUIET_KEYFILE"] = "1"
    if dry:
        env_py["TRITON_INTERPRET"] = "1"
    write()
    failed: list[str] = []
    for name, cap_run, cap_dry in STEPS:
        cap = cap_dry if dry else cap_run
        left = deadline - time.monotonic()
        entry: dict[str, Any] = {"cap_s": cap}
        doc["steps"][name] = entry
        if left < 5:
            entry["status"] = "skipped"
            entry["why"] = "the run's deadline"
            write()
            continue
        budget = min(cap, left)
        entry["budget_s"] = round(budget, 1)
        entry["status"] = "running"
        write()
        t = time.monotonic()
        try:
            if name == "install":
                if dry:
                    entry["result"] = {"skipped": "dry-run uses this environment"}
                    if wheels.is_dir():
                        entry["result"]["wheels_here"] = sorted(
                            p.name for p in wheels.glob("*.whl")
                        )
                else:
                    use_pip = bool((doc["steps"]["env"].get("result") or {}).get("pip"))
                    entry["result"] = install(wheels, site, use_pip=use_pip)
                entry["status"] = "ok"
            else:
                cmd = [sys.executable, "-m", "benchmarks.gpu_checks", "step", name,
                       "--budget", f"{budget:.0f}"] + (["--dry-run"] if dry else [])  # fmt: skip
                p = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=budget, cwd=ROOT, env=env_py
                )
                lines = p.stdout.strip().splitlines()
                try:
                    entry["result"] = json.loads(lines[-1]) if lines else None
                except ValueError:
                    entry["result"] = None
                if p.returncode != 0 or entry["result"] is None:
                    entry["status"] = "failed"
                    entry["stderr"] = p.stderr.strip()[-3000:]
                    entry["rc"] = p.returncode
                else:
                    r = entry["result"]
                    bad = r.get("missing") if name == "env" else (r.get("ok") is False)
                    entry["status"] = "failed" if bad else "ok"
        except subprocess.TimeoutExpired as exc:
            entry["status"] = "timeout"
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            entry["stderr"] = err[-2000:]
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            for line in reversed(out.strip().splitlines()):  # the step's last partial result
                try:
                    entry["result"] = json.loads(line)
                    break
                except ValueError:
                    continue
        except Exception as exc:
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:1000]}"
        entry["seconds"] = round(time.monotonic() - t, 1)
        if entry["status"] != "ok":
            failed.append(name)
        write()
        if name in ("env", "install", "kernel_fips197") and entry["status"] != "ok":
            missing = (entry.get("result") or {}).get("missing") if name == "env" else None
            why = (
                entry.get("error")
                or entry.get("stderr", "")[-300:]
                or (entry.get("result") or {}).get("reason")
            )
            doc["verdict"] = (
                f"stopped at {name}: missing " + "; ".join(missing)
                if missing
                else f"stopped at {name}: {why}"
            )
            write()
            return 3
    doc["verdict"] = "ok" if not failed else "failed: " + ", ".join(failed)
    write()
    return 0 if not failed else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "work"))
    r.add_argument("--wheels", default=str(ROOT / "benchmarks" / "work" / "wheels"))
    r.add_argument("--site", default="/tmp/wg-site")
    sm = sub.add_parser("summary")
    sm.add_argument("path")
    s = sub.add_parser("step")
    s.add_argument("name")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--budget", type=float, default=60)
    args = ap.parse_args()
    if args.cmd == "run":
        return orchestrate(args.dry_run, Path(args.out), Path(args.wheels), Path(args.site))
    if args.cmd == "summary":
        d = json.loads(Path(args.path).read_text())
        print(f"verdict: {d['verdict']} ({d.get('elapsed_s')} s)")
        for k, v in d["steps"].items():
            print(f"  {k}: {v.get('status')} ({v.get('seconds', '-')} s)")
        for k, v in (d.get("goals") or {}).items():
            print(f"  goal {k}: {'met' if v else 'NOT met'}")
        return 0
    out = run_step(args.name, args.dry_run, args.budget)
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
