"""Lazy reads (issue 23): ``weightguard.safe_open`` against safetensors and CryptoTensors.

    python -m benchmarks.lazy                 # 256 MiB model, 5 repetitions (~2 min here)
    python -m benchmarks.lazy --size-mib 1024 --reps 7

Cases, every trial in a fresh Python process (imports before the timer), variants
alternating (repetition r runs them rotated by r), warm page cache:

* ``one-tensor``: open + one ~4 MiB tensor.  safetensors ``safe_open`` + ``get_tensor``
  on the plain file; CryptoTensors 0.2.3 (encrypted + Ed25519-signed, keys given
  directly); weightguard ``safe_open`` on the signed, encrypted artifact (signature and
  policy, key unwrap from a key file, audit events to a file with fsync, the tensor's
  records checked and decrypted), split by stage (wall and main-thread CPU, exclusive:
  ``open.signature``, ``open.headers``, ``open.key_unwrap``, ``open.audit`` (events
  written), ``read.records`` (read, hash, decrypt), ``read.decision_wait`` (the open's
  audit fsync, run during the read), ``close.audit`` (``load.ok`` + fsync), ``*.other``).
  Each trial times the call twice: ``first`` (the process's first open: lazy imports,
  regex and ``strptime`` tables, the cgroup read) and ``again`` (a second open in the
  same process: the per-open fixed cost).  ``--baseline DIR`` adds
  ``weightguard-before:*`` variants that import ``weightguard`` from ``DIR`` (e.g.
  ``git archive HEAD weightguard | tar -x -C DIR``), alternating with the others.
* ``half-rows``: the same, ``get_slice(name)[: rows // 2]``.
* ``loads`` (not run by default): weightguard ``load_file`` and safetensors
  ``load_file`` + ``clone()`` only; with ``--record-mib 1,2,4`` the full load's cost of
  the record size (``weightguard:<case>@<mib>`` variants, one artifact per size).
* ``full``: every tensor.  weightguard ``safe_open`` + ``get_tensor`` of each (in
  ``keys()`` order, one call at a time) and ``safe_open(...).get_tensors()`` against
  weightguard ``load_file`` (goal: within 10 %), and safetensors ``load_file`` +
  ``clone()`` (plain) for scale.

Counts, not times (one process):

* ``quarter-slice``: records read by ``get_slice`` of a quarter of a 64 MiB tensor's rows
  (goal: <= records / 4 + 1).
* ``tp4``: bytes decrypted per rank when each of 4 ranks reads what vLLM's tensor-parallel
  rules give it on a Llama-shaped model (column-parallel q/k/v/gate/up, vocab-parallel
  embedding and lm_head: their dim-0 rows; row-parallel o/down and the norms: whole),
  through ``safe_open``/``get_slice``.  This applies vLLM's sharding rules; it does not
  run vLLM (``tests/lazy/test_vllm_tp.py`` runs vLLM's own layers on lazy tensors).
  Beside the bytes decrypted: the bytes the rank needs, and the bytes of the records
  holding them (what any reader that checks whole records must decrypt).  ``tp4`` uses
  the default record size, ``tp4_1mib_records`` 1 MiB records.

``--record-mib 1,2,4,8`` (the default record size's evidence, docs/lazy.md "Record size"):
every weightguard variant runs once per size on an artifact of that size (same model, keys
and signing key; ``weightguard:<case>@<mib>``, alternating with the rest), ``tp4`` is
counted at each size (``tp4_records``) and on real Llama shapes by layout arithmetic
(``tp_real_shapes``), and ``--only ...,encrypt`` times encrypt + sign at each size
(``encrypt_sign``: wall, CPU, artifact and signature bytes).

Results: ``benchmarks/results/lazy-<time>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "lazy"
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- preparation


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def prepare(size_mib: int) -> dict[str, Any]:
    """Plain model, weightguard artifact (+ signature, keys), CryptoTensors copy."""
    from benchmarks.models import synthetic

    model = synthetic(size_mib) / "model.safetensors"
    d = WORK / f"m{size_mib}"
    stamp = d / "prepared.json"
    if stamp.exists():
        return dict(json.loads(stamp.read_text()))
    d.mkdir(parents=True, exist_ok=True)
    from weightguard.crypt import create_key_file, encrypt_file
    from weightguard.signing import KeySigner, create_signing_key, sign_model

    kek = d / "kek.hex"
    if not kek.exists():
        create_key_file(kek)
    priv, pub = d / "release.pem", d / "release.pub"
    if not priv.exists():
        create_signing_key(priv, pub)
    rel = d / "release"
    rel.mkdir(exist_ok=True)
    art = rel / "model.safetensors"
    encrypt_file(model, art, f"file://{kek}")
    sign_model(art, rel / "model.safetensors.sig", KeySigner.from_file(priv))
    info: dict[str, Any] = {
        "plain": str(model),
        "artifact": str(art),
        "kek": f"file://{kek}",
        "pub": str(pub),
        "audit": str(d / "audit.jsonl"),
    }
    info["tensor"], info["tensor_bytes"], info["rows"] = _pick(model, 4.2 * (1 << 20))
    info["cryptotensors"] = _cryptotensors(model, d)
    stamp.write_text(json.dumps(info, indent=1))
    return info


def with_records(info: dict[str, Any], info_path: Path, mibs: list[int]) -> None:
    """Add a signed artifact of ``mib``-MiB records per size (``info["artifacts"]``), for the
    ``weightguard:<case>@<mib>`` variants (same plain model, key and signing key)."""
    from weightguard.crypt import encrypt_file
    from weightguard.signing import KeySigner, sign_model

    arts = info.setdefault("artifacts", {})
    d = info_path.parent
    for mib in mibs:
        art = d / f"release-{mib}m" / "model.safetensors"
        if str(mib) in arts and art.exists():
            continue
        art.parent.mkdir(exist_ok=True)
        encrypt_file(info["plain"], art, info["kek"], chunk_size=mib << 20)
        signer = KeySigner.from_file(d / "release.pem")
        sign_model(art, art.parent / "model.safetensors.sig", signer, replace=True)
        arts[str(mib)] = str(art)
    info_path.write_text(json.dumps(info, indent=1))


def encrypt_sign(info: dict[str, Any], mibs: list[int], reps: int) -> dict[str, Any]:
    """Encrypt + sign of the plain model at each record size (wall and CPU of this process,
    all threads; sizes alternating), and the artifact's size over the plain file's."""
    from weightguard.crypt import encrypt_file
    from weightguard.signing import KeySigner, sign_model

    d = WORK / "encrypt"
    d.mkdir(parents=True, exist_ok=True)
    signer = KeySigner.from_file(Path(info["pub"]).with_name("release.pem"))
    plain = Path(info["plain"])
    runs: dict[int, list[tuple[float, float, float, float]]] = {m: [] for m in mibs}
    for r in range(reps):
        for mib in mibs[r % len(mibs) :] + mibs[: r % len(mibs)]:
            art = d / f"{mib}m.safetensors"
            art.unlink(missing_ok=True)
            t0, c0 = time.perf_counter(), time.process_time()
            encrypt_file(plain, art, info["kek"], chunk_size=mib << 20)
            t1, c1 = time.perf_counter(), time.process_time()
            sign_model(art, d / f"{mib}m.sig", signer, replace=True)
            t2, c2 = time.perf_counter(), time.process_time()
            runs[mib].append((t1 - t0, c1 - c0, t2 - t1, c2 - c1))
    out: dict[str, Any] = {"plain_bytes": plain.stat().st_size}
    for mib, rs in runs.items():
        size = (d / f"{mib}m.safetensors").stat().st_size
        med = [round(1000 * statistics.median(x[i] for x in rs), 1) for i in range(4)]
        out[str(mib)] = {
            "encrypt_ms": med[0],
            "encrypt_cpu_ms": med[1],
            "sign_ms": med[2],
            "sign_cpu_ms": med[3],
            "artifact_bytes": size,
            "overhead_bytes": size - out["plain_bytes"],
            "signature_bytes": (d / f"{mib}m.sig").stat().st_size,
        }
    return out


def _kind(variant: str) -> str:
    """``weightguard:full@1`` -> ``full``."""
    return variant.split(":")[1].split("@")[0]


def _pick(path: Path, target: float) -> tuple[str, int, int]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        best = min(
            (
                (abs(_nbytes(f.get_slice(k)) - target), k, _nbytes(f.get_slice(k)))
                for k in f.keys()  # noqa: SIM118 - not a dict
                if len(f.get_slice(k).get_shape()) == 2
            ),
        )
        return best[1], best[2], f.get_slice(best[1]).get_shape()[0]


def _nbytes(s: Any) -> int:
    n = {"F32": 4, "F16": 2, "BF16": 2}.get(s.get_dtype(), 1)
    for x in s.get_shape():
        n *= x
    return n


def _cryptotensors(model: Path, d: Path) -> dict[str, Any] | str:
    """An encrypted + signed CryptoTensors copy, and its decryption config."""
    try:
        import cryptotensors
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptotensors.torch import save_file
        from safetensors.torch import load_file
    except ImportError as exc:
        return f"unavailable ({exc})"
    sk = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    priv = sk.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = sk.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    enc = {"kty": "oct", "alg": "aes256gcm", "kid": "enc", "k": _b64(os.urandom(32))}
    sig = {"kty": "okp", "alg": "ed25519", "kid": "sig", "private": _b64(priv), "public": _b64(pub)}
    out = d / "cryptotensors.safetensors"
    cfg = cryptotensors.SerializeCryptoConfig(enc_key=enc, sign_key=sig).to_dict()
    save_file(load_file(str(model)), str(out), config=cfg)
    verify = {k: v for k, v in sig.items() if k != "private"}
    return {"path": str(out), "config": {"enc_key": enc, "sign_key": verify}}


# --------------------------------------------------------------------------- trials


def _setup(variant: str, info: dict[str, Any]) -> Any:
    """Imports and inputs outside the timer; returns the timed callable."""
    import torch

    name, rows = info["tensor"], info["rows"]
    if variant.startswith("safetensors"):
        import safetensors
        import safetensors.torch

        plain = info["plain"]

        def st_one() -> Any:
            with safetensors.safe_open(plain, "pt") as f:
                return f.get_tensor(name)

        def st_half() -> Any:
            with safetensors.safe_open(plain, "pt") as f:
                return f.get_slice(name)[: rows // 2]

        def st_full() -> Any:
            return {k: v.clone() for k, v in safetensors.torch.load_file(plain).items()}

        return {"one": st_one, "half": st_half, "full": st_full}[_kind(variant)]
    if variant.startswith("cryptotensors"):
        import cryptotensors

        ct = info["cryptotensors"]

        def ct_one() -> Any:
            with cryptotensors.safe_open(ct["path"], "pt", config=ct["config"]) as f:
                return f.get_tensor(name)

        def ct_half() -> Any:
            with cryptotensors.safe_open(ct["path"], "pt", config=ct["config"]) as f:
                return f.get_slice(name)[: rows // 2]

        return {"one": ct_one, "half": ct_half}[_kind(variant)]
    os.environ["WEIGHTGUARD_ALLOW_KEY"] = info["kek"]
    os.environ["WEIGHTGUARD_AUDIT_LOG"] = info["audit"]
    import importlib

    import weightguard
    import weightguard.lazy
    import weightguard.loader
    from weightguard.policy import PublicKey

    # imports before the timer, as for the anchors (the first call imports these lazily)
    for mod in (
        "cryptography.hazmat.primitives.serialization",
        "weightguard._internal.signing.oms",
        "weightguard._internal.load.ranges",
        "weightguard._internal.format.hf_cache",
        "numpy",
    ):
        importlib.import_module(mod)

    art, pub = info["artifact"], info["pub"]
    if "@" in variant:  # weightguard:<case>@<mib>: the artifact of <mib>-MiB records
        art = info["artifacts"][variant.split("@")[1]]
    stages = _Stages()
    stages.instrument()

    def wg_one() -> Any:
        stages.reset()
        with stages.phase("policy"):
            policy = PublicKey.from_file(pub)
        with stages.phase("open"):
            f = weightguard.safe_open(art, policy=policy)
        with stages.phase("read"):
            t = f.get_tensor(name)
        with stages.phase("close"):
            f.close()
        return t

    def wg_half() -> Any:
        with weightguard.safe_open(art, policy=PublicKey.from_file(pub)) as f:
            return f.get_slice(name)[: rows // 2]

    def wg_full() -> Any:
        with weightguard.safe_open(art, policy=PublicKey.from_file(pub)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict

    def wg_get_tensors() -> Any:
        with weightguard.safe_open(art, policy=PublicKey.from_file(pub)) as f:
            return f.get_tensors()

    def wg_load_file() -> Any:
        return weightguard.load_file(art, policy=PublicKey.from_file(pub))

    fn = {
        "one": wg_one,
        "half": wg_half,
        "full": wg_full,
        "get_tensors": wg_get_tensors,
        "load_file": wg_load_file,
    }[_kind(variant)]
    fn.stages = stages  # type: ignore[attr-defined]
    del torch
    return fn


class _Stages:
    """Exclusive wall and main-thread CPU time per stage of one ``safe_open`` + read +
    close, by wrapping the loader's steps in the trial process (nothing in weightguard
    changes; other threads' time is not counted, their waits are)."""

    STEPS = (
        ("weightguard.loader", "_verify_signature", "signature"),
        ("weightguard.loader", "open_file", "headers"),
        ("weightguard.loader", "_unwrap_keys", "key_unwrap"),
        ("weightguard.audit", "AuditLog.__init__", "audit"),
        ("weightguard.audit", "AuditLog.emit", "audit"),
        ("weightguard.audit", "AuditLog.close", "audit"),
        ("weightguard._internal.load.ranges", "RangeReader.read", "records"),
        ("weightguard.lazy", "SafeOpen._await_decision", "decision_wait"),
    )

    def __init__(self) -> None:
        import threading

        self._main = threading.main_thread()
        self._threading = threading
        self.result: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [wall start, cpu start, child wall, child cpu]
        self._phase = "setup"

    def reset(self) -> None:
        self.result = {}
        self._stack = []

    def _add(self, label: str, wall: float, cpu: float) -> None:
        self.result[label + ".wall"] = self.result.get(label + ".wall", 0.0) + wall
        self.result[label + ".cpu"] = self.result.get(label + ".cpu", 0.0) + cpu

    def _enter(self) -> None:
        self._stack.append([time.perf_counter(), time.thread_time(), 0.0, 0.0])

    def _leave(self, label: str) -> None:
        w0, c0, cw, cc = self._stack.pop()
        wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
        self._add(label, wall - cw, cpu - cc)
        if self._stack:
            self._stack[-1][2] += wall
            self._stack[-1][3] += cpu

    def phase(self, name: str) -> Any:
        import contextlib

        @contextlib.contextmanager
        def cm() -> Any:
            self._phase = name
            self._enter()
            try:
                yield
            finally:
                self._leave(f"{name}.other" if name != "policy" else name)

        return cm()

    def instrument(self) -> None:
        import functools
        import importlib

        for mod_name, attr, label in self.STEPS:
            owner: Any = importlib.import_module(mod_name)
            *path, leaf = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            real = getattr(owner, leaf, None)
            if real is None:
                continue  # e.g. the baseline has no decision wait

            def wrapped(*a: Any, _real: Any = real, _label: str = label, **k: Any) -> Any:
                if self._threading.current_thread() is not self._main or not self._stack:
                    return _real(*a, **k)
                self._enter()
                try:
                    return _real(*a, **k)
                finally:
                    self._leave(f"{self._phase}.{_label}")

            setattr(owner, leaf, functools.wraps(real)(wrapped))


def trial(variant: str, info_path: str) -> None:
    """Child process: set up, time one call, print a JSON line."""
    info = json.loads(Path(info_path).read_text())
    if os.environ.get("WG_BENCH_BASELINE"):  # before the working tree (sys.path[0])
        sys.path.insert(0, os.environ["WG_BENCH_BASELINE"])
    fn = _setup(variant, info)
    load = os.getloadavg()[0]
    import weightguard

    res: dict[str, Any] = {"variant": variant, "loadavg": load, "weightguard": weightguard.__file__}
    for when in ("first", "again"):  # the process's first call, then a second one
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        key = "" if when == "first" else "again_"
        res |= {key + "wall_s": wall, key + "cpu_s": cpu}
        timer = getattr(fn, "stages", None)
        res[key + "stages"] = dict(timer.result) if timer is not None else {}
        res["tensors"] = len(out) if isinstance(out, dict) else 1
        del out
        if _kind(variant) not in ("one", "half"):
            break  # full reads: once
    print(json.dumps(res))


def _run(variant: str, info_path: Path, baseline: str | None = None) -> dict[str, Any]:
    from benchmarks.harness import realtime_ok

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WG_BENCH_BASELINE": baseline if variant.startswith("weightguard-before:") else "",
        "PYTHONPYCACHEPREFIX": str(ROOT / "benchmarks" / "work" / "pycache"),
    }
    trial = variant.replace("weightguard-before:", "weightguard:")
    prefix = ["chrt", "-f", "1"] if realtime_ok() else []
    res = subprocess.run(
        [*prefix, sys.executable, "-m", "benchmarks.lazy", "--trial", trial, str(info_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    if res.returncode != 0:
        return {"variant": variant, "error": res.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]), variant=variant)


# --------------------------------------------------------------------------- counts


def quarter_slice(work: Path) -> dict[str, Any]:
    """Records read by a quarter-rows slice of a 64 MiB tensor (signed + encrypted)."""
    import torch
    from safetensors.torch import save_file

    from weightguard import safe_open
    from weightguard.crypt import create_key_file, encrypt_file
    from weightguard.policy import UnsafeNoVerification

    work.mkdir(parents=True, exist_ok=True)
    plain, art, kek = work / "q.plain", work / "q.safetensors", work / "q-kek.hex"
    if not kek.exists():
        create_key_file(kek)
    g = torch.Generator().manual_seed(1)
    big = torch.randn(4096, 4096, generator=g)
    save_file({"a": torch.ones(3), "big": big}, str(plain))
    encrypt_file(plain, art, f"file://{kek}")
    os.environ["WEIGHTGUARD_ALLOW_KEY"] = f"file://{kek}"
    with safe_open(art, policy=UnsafeNoVerification(), cache_bytes=0) as f:
        part = f.get_slice("big")[1024:2048]
        assert torch.equal(part, big[1024:2048])
        st = f.stats
    records = (64 << 20) // (4 << 20)
    return {
        "records_in_tensor": records,
        "records_read": st["records_read"],
        "goal": records // 4 + 1,
        "met": st["records_read"] <= records // 4 + 1,
    }


LLAMA = {"hidden": 2048, "inter": 5632, "kv": 256, "layers": 3, "vocab": 8192}


def tp4(
    work: Path, tp: int = 4, chunk: int | None = None, shape: str | None = None
) -> dict[str, Any]:
    """Bytes decrypted per rank at tensor-parallel ``tp`` under vLLM's sharding rules,
    on an artifact of ``chunk``-byte records (default: ``weightguard encrypt``'s), of the
    small Llama-shaped model or, with ``shape``, one of :data:`LLAMA_SHAPES` (all its
    layers; zero weights, as the count does not depend on the values)."""
    import torch
    from safetensors.torch import save_file

    from weightguard import safe_open
    from weightguard.crypt import DEFAULT_CHUNK_SIZE, create_key_file, encrypt_file
    from weightguard.policy import UnsafeNoVerification

    chunk = chunk or DEFAULT_CHUNK_SIZE
    dims = LLAMA_SHAPES[shape] if shape else LLAMA
    shapes = llama_shapes(dims)
    work.mkdir(parents=True, exist_ok=True)
    stem = f"llama-{shape}" if shape else "llama"
    plain, kek = work / f"{stem}.plain", work / "l-kek.hex"
    art = work / f"{stem}-{chunk >> 10}k.safetensors"
    if not kek.exists():
        create_key_file(kek)
    if not art.exists():
        if not plain.exists():
            g = torch.Generator().manual_seed(2)
            make = (
                (lambda s: torch.zeros(s, dtype=torch.bfloat16))
                if shape
                else (lambda s: torch.randn(s, generator=g).to(torch.bfloat16))
            )
            weights = {k: make(s) for k, s in shapes.items()}
            save_file(weights, str(plain))
        encrypt_file(plain, art, f"file://{kek}", chunk_size=chunk)
    os.environ["WEIGHTGUARD_ALLOW_KEY"] = f"file://{kek}"
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    per_rank, bound, needed = [], [], []
    for rank in range(tp):
        with safe_open(art, policy=UnsafeNoVerification()) as f:
            geo = f._files[0].geometry
            touched: set[int] = set()  # records holding a byte this rank needs
            need = 0
            for name in f.keys():  # noqa: SIM118 - not a dict
                info = f._info(name)
                begin, end = info.begin, info.end
                if any(c in name for c in COLUMN):
                    rows = f.get_slice(name).get_shape()[0]
                    r0, r1 = rank * rows // tp, (rank + 1) * rows // tp
                    f.get_slice(name)[r0:r1]
                    row = (end - begin) // rows
                    begin, end = begin + r0 * row, begin + r1 * row
                else:
                    f.get_tensor(name)
                need += end - begin
                if end > begin:
                    touched.update(range(begin // geo.chunk + 1, (end - 1) // geo.chunk + 2))
            per_rank.append(f.stats["bytes_decrypted"])
            bound.append(sum(geo.span(k)[3] for k in touched))
            needed.append(need)
    worst = max(per_rank) / total
    return {
        "model_bytes": total,
        "tp": tp,
        "bytes_decrypted_per_rank": per_rank,
        "fraction_worst_rank": round(worst, 3),
        # the records holding the bytes a rank needs: no reader of whole records does less
        "fraction_records_needed_worst_rank": round(max(bound) / total, 3),
        "fraction_bytes_needed_worst_rank": round(max(needed) / total, 3),  # its own bytes
        "goal": 0.55,
        "met": worst <= 0.55,
        "shape": shape or dims,
        "record_bytes": chunk,
    }


# Real Llama shapes (hidden, intermediate, kv heads x head dim, layers, vocab), for the
# layout arithmetic below: the benchmark's model is much smaller, its tensors a few records.
LLAMA_SHAPES = {
    "Llama-3.2-1B": {"hidden": 2048, "inter": 8192, "kv": 512, "layers": 16, "vocab": 128256},
    "Llama-3-8B": {"hidden": 4096, "inter": 14336, "kv": 1024, "layers": 32, "vocab": 128256},
    "Llama-3-70B": {"hidden": 8192, "inter": 28672, "kv": 1024, "layers": 80, "vocab": 128256},
}
COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")


def llama_shapes(shape: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a Llama-shaped checkpoint (untied lm_head)."""
    h, i, kv, n, v = (shape[k] for k in ("hidden", "inter", "kv", "layers", "vocab"))
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, h),
        "lm_head.weight": (v, h),
        "model.norm.weight": (h,),
    }
    for layer in range(n):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    return shapes


def records_needed(shapes: dict[str, tuple[int, ...]], tp: int, chunk: int) -> float:
    """Worst rank's fraction of the model in the records holding what it needs under vLLM's
    rules (as :func:`tp4`), by layout arithmetic: BF16 tensors in safetensors' order
    (name order at one dtype), nothing written or read."""
    offset, layout = 0, []
    for name in sorted(shapes):
        n = 2
        for d in shapes[name]:
            n *= d
        layout.append((name, offset, offset + n, shapes[name][0]))
        offset += n
    total, worst = offset, 0
    for rank in range(tp):
        touched: set[int] = set()
        for name, begin, end, rows in layout:
            if any(c in name for c in COLUMN):
                row = (end - begin) // rows
                r0, r1 = rank * rows // tp, (rank + 1) * rows // tp
                begin, end = begin + r0 * row, begin + r1 * row
            if end > begin:
                touched.update(range(begin // chunk, (end - 1) // chunk + 1))
        worst = max(worst, sum(min(chunk, total - k * chunk) for k in touched))
    return worst / total


def tp_real_shapes(mibs: list[int]) -> dict[str, dict[str, float]]:
    """:func:`records_needed` at TP 4 (and 8 for 70B) for each record size, real shapes."""
    out: dict[str, dict[str, float]] = {}
    for model, shape in LLAMA_SHAPES.items():
        shapes = llama_shapes(shape)
        for tp in (4, 8) if "70B" in model else (4,):
            out[f"{model} tp{tp}"] = {
                str(m): round(records_needed(shapes, tp, m << 20), 3) for m in mibs
            }
    return out


# --------------------------------------------------------------------------- main


CASES = {
    "one-tensor": ["safetensors:one", "cryptotensors:one", "weightguard:one"],
    "half-rows": ["safetensors:half", "cryptotensors:half", "weightguard:half"],
    "full": [
        "weightguard:full",
        "weightguard:get_tensors",
        "weightguard:load_file",
        "safetensors:full",
    ],
    # the full secure load alone (with --record-mib: the record size's cost on it)
    "loads": ["weightguard:load_file", "safetensors:full"],
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument(
        "--baseline",
        default=None,
        help="a directory holding an earlier weightguard package: adds weightguard-before:"
        " variants (one-tensor, half-rows, the full get_tensor loop), alternating with the"
        " others",
    )
    ap.add_argument(
        "--record-mib",
        default="",
        help="comma-separated record sizes (MiB), e.g. 1,2,4: each weightguard variant runs on"
        " an artifact of each (weightguard:<case>@<mib>, alternating), tp4 is counted at each"
        " and encrypt + sign is timed at each",
    )
    ap.add_argument("--trial", nargs=2, metavar=("VARIANT", "INFO"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--doc", nargs="+", metavar="RESULT", help="print docs/lazy.md's tables from result files"
    )
    args = ap.parse_args(argv)
    if args.trial:
        trial(*args.trial)
        return
    if args.doc:
        print(doc_tables([json.loads(Path(p).read_text()) | {"file": p} for p in args.doc]))
        return
    info = prepare(args.size_mib)
    info_path = WORK / f"m{args.size_mib}" / "prepared.json"
    have_ct = isinstance(info["cryptotensors"], dict)
    cases = {
        k: v for k, v in CASES.items() if (k in args.only.split(",") if args.only else k != "loads")
    }
    mibs = [int(m) for m in args.record_mib.split(",") if m]
    if mibs:
        with_records(info, info_path, mibs)
    from benchmarks.harness import machine_info

    results: dict[str, Any] = {
        "machine": machine_info(),  # CPU model + flags, cores, kernel, load average
        "size_mib": args.size_mib,
        "tensor": info["tensor"],
        "tensor_bytes": info["tensor_bytes"],
        "reps": args.reps,
        "baseline": args.baseline,
        "record_mib": mibs,
        "cases": {},
    }
    for case, variants in cases.items():
        variants = [v for v in variants if have_ct or not v.startswith("cryptotensors")]
        if args.baseline and case in ("one-tensor", "half-rows", "full"):
            wg = variants[0] if case == "full" else variants[-1]  # full: the get_tensor loop
            variants.append(wg.replace("weightguard:", "weightguard-before:"))
        if mibs:  # each weightguard variant once per record size
            variants = [
                f"{v}@{m}" if v.startswith("weightguard:") else v
                for v in variants
                for m in (mibs if v.startswith("weightguard:") else [0])
            ]
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(args.reps):
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                runs[v].append(_run(v, info_path, args.baseline))
        results["cases"][case] = {v: _summary(rs) for v, rs in runs.items()}
    if not args.only or "counts" in args.only.split(","):
        results["quarter_slice"] = quarter_slice(WORK / "counts")
        results["tp4"] = tp4(WORK / "counts")
        results["tp4_1mib_records"] = tp4(WORK / "counts", chunk=1 << 20)
        # a real model's shapes (2.5 GB, all 16 layers), decrypted rank by rank
        results["tp4_llama_3_2_1b"] = tp4(WORK / "counts", shape="Llama-3.2-1B")
        for mib in mibs:
            results.setdefault("tp4_records", {})[str(mib)] = tp4(WORK / "counts", chunk=mib << 20)
        if mibs:  # the same rules on real Llama shapes, by arithmetic
            results["tp_real_shapes"] = tp_real_shapes(mibs)
    if mibs and (not args.only or "encrypt" in args.only.split(",")):
        results["encrypt_sign"] = encrypt_sign(info, mibs, args.reps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"lazy-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=1))
    _print(results)
    print(f"\nwrote {out.relative_to(ROOT)}")


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "wall_s" in r]
    if not ok:
        return {"error": runs[0].get("error")}
    walls = sorted(r["wall_s"] for r in ok)
    out: dict[str, Any] = {
        "median_ms": round(1000 * statistics.median(walls), 2),
        "min_ms": round(1000 * walls[0], 2),
        "max_ms": round(1000 * walls[-1], 2),
        "cpu_median_ms": round(1000 * statistics.median(r["cpu_s"] for r in ok), 2),
        "loadavg_median": round(statistics.median(r["loadavg"] for r in ok), 2),
    }
    if "again_wall_s" in ok[0]:
        out["again_median_ms"] = round(1000 * statistics.median(r["again_wall_s"] for r in ok), 2)
        out["again_cpu_median_ms"] = round(
            1000 * statistics.median(r["again_cpu_s"] for r in ok), 2
        )
    for key in ("stages", "again_stages"):
        if ok[0].get(key):
            names = sorted({k for r in ok for k in r[key]})
            out[key + "_median_ms"] = {
                k: round(1000 * statistics.median(r[key].get(k, 0.0) for r in ok), 2) for k in names
            }
    paths = sorted({r["weightguard"] for r in ok if "weightguard" in r})
    if paths:
        out["weightguard_from"] = paths
    return out


STAGE_ORDER = (
    ("policy", "policy (`PublicKey.from_file`)"),
    ("open.signature", "open: signature + policy"),
    ("open.headers", "open: weight file header parsed, checked"),
    ("open.key_unwrap", "open: key unwrap + header record decrypted"),
    ("open.audit", "open: audit log opened, 3 events written"),
    ("open.other", "open: the rest"),
    ("read.records", "read: record(s) read, hashed, decrypted"),
    ("read.decision_wait", "read: waiting for the open's audit fsync"),
    ("read.other", "read: the rest"),
    ("close.audit", "close: `load.ok` + fsync, log closed"),
    ("close.other", "close: cache wiped, keys dropped"),
)


def doc_tables(results: list[dict[str, Any]]) -> str:
    """docs/lazy.md's tables from result files (so the figures are never copied by hand)."""
    lines: list[str] = []
    for res in results:
        m = res["machine"]
        lines.append(
            f"`{Path(res['file']).name}`: {res['size_mib']} MiB model, {res['reps']} "
            f"repetitions, {m['cores']} cores, load average {m['loadavg'][0]} at the start"
            f"{', trials under chrt -f 1' if m.get('trials_under_chrt_f1') else ''}."
        )
        lines.append("")
        cases = res["cases"]
        if "one-tensor" in cases:
            lines += _doc_one(res)
        if "full" in cases:
            lines += _doc_full(cases["full"])
        for key in ("quarter_slice", "tp4", "tp4_1mib_records", "tp4_llama_3_2_1b"):
            if key in res:
                lines.append(f"* `{key}`: `{json.dumps(res[key])}`")
        lines.append("")
    return "\n".join(lines)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _doc_one(res: dict[str, Any]) -> list[str]:
    one, half = res["cases"]["one-tensor"], res["cases"].get("half-rows", {})
    kib = res["tensor_bytes"] / (1 << 20)
    out = [
        f"One tensor (`{res['tensor']}`, {kib:.1f} MiB), open to tensor to close, medians "
        "(ms): `first` is a fresh process's first call, `again` a second one in the same "
        "process; CPU is the process's CPU time of the first call.",
        "",
        "| variant | first | CPU | again | half of its rows (`get_slice`), first | load avg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v, s in one.items():
        if "error" in s:
            continue
        h = half.get(v.replace(":one", ":half"), {})
        out.append(
            f"| {v.replace(':one', '')} | {_ms(s['median_ms'])} | {_ms(s['cpu_median_ms'])} | "
            f"{_ms(s.get('again_median_ms'))} | {_ms(h.get('median_ms'))} | "
            f"{s['loadavg_median']} |"
        )
    w, ct, st = (
        one.get(k, {}) for k in ("weightguard:one", "cryptotensors:one", "safetensors:one")
    )
    if all("median_ms" in x for x in (w, ct, st)):
        out.append("")
        for label, key in (("first call", "median_ms"), ("again", "again_median_ms")):
            a, b, c = w.get(key), ct.get(key), st.get(key)
            if a and b and c:
                out.append(
                    f"* goal, {label}: weightguard {a / b:.1f}x CryptoTensors (goal <= 1.0: "
                    f"{'met' if a <= b else 'not met'}), {a / c:.0f}x safetensors (goal <= 2: "
                    f"{'met' if a <= 2 * c else 'not met'})"
                )
    wg = [v for v in one if v.startswith("weightguard") and "stages_median_ms" in one[v]]
    if wg:
        out += ["", "weightguard by stage, medians (ms), wall / main-thread CPU:", ""]
        head = " | ".join(f"{v.replace(':one', '')} {w}" for v in wg for w in ("first", "again"))
        out += [f"| stage | {head} |", "| --- |" + " --- |" * (2 * len(wg))]
        for key, label in STAGE_ORDER:
            cells = []
            for v in wg:
                for st in ("stages_median_ms", "again_stages_median_ms"):
                    d = one[v].get(st, {})
                    w, c = d.get(key + ".wall"), d.get(key + ".cpu")
                    cells.append("-" if w is None else f"{w:.2f} / {c:.2f}")
            out.append(f"| {label} | {' | '.join(cells)} |")
    out.append("")
    return out


FULL_LABELS = {
    "weightguard:full": "weightguard `get_tensor` of each name in `keys()` order",
    "weightguard-before:full": "weightguard-before `get_tensor` of each name in `keys()` order",
    "weightguard:get_tensors": "weightguard `safe_open(...).get_tensors()`",
    "weightguard:load_file": "weightguard `load_file`",
    "safetensors:full": "safetensors `load_file` + `clone()` (plain)",
}


def _doc_full(full: dict[str, Any]) -> list[str]:
    out = [
        "| full read of the model | time (ms) | vs weightguard `load_file` | CPU (ms) "
        "| CPU vs `load_file` |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v, s in full.items():
        if "error" in s:
            continue
        wg = v.startswith("weightguard")
        lf = full.get("weightguard:load_file" + v.partition("@")[1] + v.partition("@")[2], {})
        base, cpu_base = lf.get("median_ms"), lf.get("cpu_median_ms")
        ratio = f"{s['median_ms'] / base:.2f}x" if base and wg else ""
        cpu = s.get("cpu_median_ms")
        cpu_ratio = f"{cpu / cpu_base:.2f}x" if cpu and cpu_base and wg else ""
        out.append(
            f"| {FULL_LABELS.get(v, v)} | {_ms(s['median_ms'])} | {ratio} | {_ms(cpu)} "
            f"| {cpu_ratio} |"
        )
    out.append("")
    return out


def _print(res: dict[str, Any]) -> None:
    print(
        f"model {res['size_mib']} MiB, tensor {res['tensor']} "
        f"({res['tensor_bytes'] / (1 << 20):.1f} MiB), {res['reps']} reps, fresh processes"
    )
    for case, vs in res["cases"].items():
        print(f"\n{case}:")
        for v, s in vs.items():
            if "error" in s:
                print(f"  {v:24} error {s['error']}")
                continue
            again = f", again {s['again_median_ms']} ms" if "again_median_ms" in s else ""
            print(
                f"  {v:26} {s['median_ms']:9.2f} ms  ({s['min_ms']}-{s['max_ms']}) "
                f"cpu {s['cpu_median_ms']} ms{again}, load {s['loadavg_median']}"
            )
            for key in ("stages_median_ms", "again_stages_median_ms"):
                if key in s:
                    walls = {k[:-5]: ms for k, ms in s[key].items() if k.endswith(".wall")}
                    print(f"    {key.split('_median')[0]:13} wall {walls}")
    for key in (
        "quarter_slice",
        "tp4",
        "tp4_1mib_records",
        "tp4_llama_3_2_1b",
        "tp4_records",
        "tp_real_shapes",
        "encrypt_sign",
    ):
        if key in res:
            print(f"\n{key}: {json.dumps(res[key])}")


if __name__ == "__main__":
    main()
