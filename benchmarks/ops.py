"""The benchmarked operations, anchors first, then weightguard.

Each op takes JSON-able keyword params, does its untimed setup (imports, keys, output
directory) and returns the timed zero-argument callable, which returns the number of
bytes processed (or a dict with ``bytes``).  Every op checks its result (tensor count,
byte totals, exit codes) so a broken or lazy path cannot pass as fast.  A weightguard op
whose API has not landed raises :class:`benchmarks.harness.Unavailable`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Unavailable

Timed = Callable[[], Any]
VENV_BIN = Path(sys.executable).parent


def _files(model: str) -> list[Path]:
    p = Path(model)
    if p.is_file():
        return [p]
    return sorted(q for q in p.iterdir() if q.suffix == ".safetensors")


def _nbytes(tensors: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _expect_tensors(got: dict[str, Any], expect: int | None, what: str) -> None:
    if expect is not None and len(got) != expect:
        raise RuntimeError(f"{what}: got {len(got)} tensors, expected {expect}")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _need_cuda(device: str) -> None:
    """Import torch (and start CUDA) untimed, so no variant pays for them in its timing."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Unavailable("CUDA not available on this machine")
        # create the CUDA context before the timer (and before the base RSS is read)
        torch.zeros(1, device=device)
        torch.cuda.synchronize()


# ------------------------------------------------------------------ baselines


def noop_python() -> Timed:
    """Interpreter start-up alone: ``python -c pass`` (context for the CLI start-up case)."""

    def run() -> int:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return 0

    return run


def read_file(model: str) -> Timed:
    """Plain sequential read of the files (the I/O floor)."""
    files = _files(model)

    def run() -> int:
        buf = bytearray(16 << 20)
        total = 0
        for p in files:
            with open(p, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
        return total

    return run


# ------------------------------------------------------------------ safetensors anchors


def st_load(
    model: str,
    device: str = "cpu",
    clone: bool = True,
    expect: int | None = None,
    threads: int = 0,
) -> Timed:
    """``safetensors.torch.load_file`` (+ clone every tensor on CPU, so pages are really read).

    ``threads=1``: torch's intra-op pool limited to one thread (``clone`` of a large tensor
    is a parallel copy otherwise): the plain load a one-core pod gets.
    """
    _need_cuda(device)
    import torch
    from safetensors.torch import load_file

    if threads:
        torch.set_num_threads(threads)
    files = _files(model)

    def run() -> int:
        out: dict[str, Any] = {}
        for p in files:
            part = load_file(str(p), device=device)
            if clone and device == "cpu":
                part = {k: v.clone() for k, v in part.items()}
            out.update(part)
        _sync(device)
        _expect_tensors(out, expect, "safetensors")
        return _nbytes(out)

    return run


def runai_load(model: str, device: str = "cpu", expect: int | None = None) -> Timed:
    """Run:ai Model Streamer (``runai-model-streamer``): its C++ reader threads stream
    every tensor of every file; ``owned=True`` (the default) hands each tensor over, so no
    copy is needed to keep them.  Concurrency is the streamer's default
    (``RUNAI_STREAMER_CONCURRENCY``)."""
    _need_cuda(device)
    try:
        from runai_model_streamer import SafetensorsStreamer
    except Exception as exc:
        raise Unavailable(f"runai-model-streamer does not import here: {exc}") from None
    files = [str(p) for p in _files(model)]

    def run() -> int:
        out: dict[str, Any] = {}
        with SafetensorsStreamer() as streamer:
            streamer.stream_files(files, device=device)
            for name, tensor in streamer.get_tensors():
                out[name] = tensor
        _sync(device)
        _expect_tensors(out, expect, "runai streamer")
        return _nbytes(out)

    return run


def fastsafetensors_load(model: str, device: str = "cpu", expect: int | None = None) -> Timed:
    """fastsafetensors without GPUDirect Storage (``nogds=True``): pread + bounce buffer."""
    _need_cuda(device)
    try:
        from fastsafetensors import fastsafe_open
    except Exception as exc:  # it needs its C++ extension
        raise Unavailable(f"fastsafetensors does not import here: {exc}") from None
    files = [str(p) for p in _files(model)]

    def run() -> int:
        with fastsafe_open(filenames=files, nogds=True, device=device) as f:
            out = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        _sync(device)
        _expect_tensors(out, expect, "fastsafetensors")
        return _nbytes(out)

    return run


# ------------------------------------------------------------------ CryptoTensors anchor


def _b64(b: bytes) -> str:
    import base64

    return base64.b64encode(b).decode()


def cryptotensors_prepare(model: str, out: str) -> Path:
    """Untimed: every weight file of ``model`` as CryptoTensors writes it, AES-256-GCM
    encrypted and Ed25519-signed (its ``SerializeCryptoConfig``), into ``out`` with the
    decryption config (data key + public key) in ``out/config.json``; cached."""
    try:
        import cryptotensors
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptotensors.torch import save_file
        from safetensors.torch import load_file
    except ImportError as exc:
        raise Unavailable(f"cryptotensors does not import here: {exc}") from None
    dst = Path(out)
    if (dst / "config.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sk = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    priv = sk.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = sk.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    enc = {"kty": "oct", "alg": "aes256gcm", "kid": "enc", "k": _b64(os.urandom(32))}
    sig = {
        "kty": "okp",
        "alg": "ed25519",
        "kid": "sig",
        "private": _b64(priv),
        "public": _b64(pub),
    }
    cfg = cryptotensors.SerializeCryptoConfig(enc_key=enc, sign_key=sig).to_dict()
    for p in _files(model):
        save_file(load_file(str(p)), str(tmp / p.name), config=cfg)
    public = {k: v for k, v in sig.items() if k != "private"}
    (tmp / "config.json").write_text(json.dumps({"enc_key": enc, "sign_key": public}))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def cryptotensors_load(model: str, device: str = "cpu", expect: int | None = None) -> Timed:
    """CryptoTensors' full load: ``cryptotensors.safe_open(config=...)`` and
    ``get_tensor`` of every tensor of every file (its signature checked, AES-256-GCM
    decrypted into tensors of their own), the keys given in the config."""
    _need_cuda(device)
    try:
        import cryptotensors
    except ImportError as exc:
        raise Unavailable(f"cryptotensors does not import here: {exc}") from None
    if not model:
        raise Unavailable("no CryptoTensors copy was prepared")
    cfg = json.loads((Path(model) / "config.json").read_text())
    files = [str(p) for p in _files(model)]

    def run() -> int:
        out: dict[str, Any] = {}
        for path in files:
            with cryptotensors.safe_open(path, "pt", device=device, config=cfg) as f:
                for k in f.keys():  # noqa: SIM118 (not a dict)
                    out[k] = f.get_tensor(k)
        _sync(device)
        _expect_tensors(out, expect, "cryptotensors")
        return _nbytes(out)

    return run


# ------------------------------------------------------------------ tensorizer anchors


def _tensorizer_key(path: Path) -> bytes:
    return bytes.fromhex(path.with_suffix(".key").read_text().strip())


def tensorizer_prepare(model: str, out: str) -> Path:
    """Untimed: serialize ``model`` encrypted with tensorizer (cached next to ``out``)."""
    from safetensors.torch import load_file
    from tensorizer import EncryptionParams, TensorSerializer

    dst = Path(out)
    if dst.exists() and dst.with_suffix(".key").exists():
        return dst
    sd: dict[str, Any] = {}
    for p in _files(model):
        sd.update(load_file(str(p)))
    enc = EncryptionParams.random()
    tmp = dst.with_name(dst.name + ".tmp")
    s = TensorSerializer(str(tmp), encryption=enc)
    s.write_state_dict(sd)
    s.close()
    dst.with_suffix(".key").write_text(enc.key.hex())
    os.replace(tmp, dst)
    return dst


def tensorizer_encrypt(
    model: str, out_dir: str, preload: bool = True, durable: bool = False
) -> Timed:
    """tensorizer encrypted serialize (XSalsa20-Poly1305 per chunk, libsodium).

    ``preload=True``: the state dict is already in memory (not timed): tensorizer's own
    serialize cost only, the most favourable reading for the anchor.  ``preload=False``:
    file to file, ``safetensors.torch.load_file`` + serialize, like ``weightguard encrypt``.
    ``durable=True``: ``fsync`` the output inside the timer, as ``weightguard encrypt``
    does (its atomic write); compare like with like: both durable on disk, or both on tmpfs
    (``out_dir`` under ``/dev/shm``, where ``fsync`` costs nothing).
    """
    from safetensors.torch import load_file
    from tensorizer import EncryptionParams, TensorSerializer

    files = _files(model)
    enc = EncryptionParams.random()
    dst = Path(out_dir) / "model.tensors"
    pre: dict[str, Any] = {}
    if preload:
        for p in files:
            pre.update({k: v.clone() for k, v in load_file(str(p)).items()})

    def run() -> int:
        sd = pre
        if not preload:
            sd = {}
            for p in files:
                sd.update(load_file(str(p)))
        s = TensorSerializer(str(dst), encryption=enc)
        s.write_state_dict(sd)
        s.close()
        if durable:
            fd = os.open(dst, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return sum(p.stat().st_size for p in files)

    return run


def tensorizer_load(
    tensors_file: str, device: str = "cpu", expect: int | None = None, encrypted: bool = True
) -> Timed:
    """tensorizer encrypted deserialize of every tensor (``lazy_load=False``)."""
    _need_cuda(device)
    from tensorizer import DecryptionParams, TensorDeserializer

    path = Path(tensors_file)
    dec = DecryptionParams.from_key(_tensorizer_key(path)) if encrypted else None

    def run() -> int:
        d = TensorDeserializer(str(path), device=device, encryption=dec)
        out = dict(d.items())
        _sync(device)
        d.close()
        _expect_tensors(out, expect, "tensorizer")
        return _nbytes(out)

    return run


# ------------------------------------------------------------------ model_signing anchors


def ms_sign_api(model: str, key: str, out_dir: str) -> Timed:
    """``model_signing.signing.Config().use_elliptic_key_signer(...).sign()`` (defaults)."""
    from model_signing import signing

    sig = Path(out_dir) / "model.sig"
    cfg = signing.Config().use_elliptic_key_signer(private_key=key)

    def run() -> int:
        cfg.sign(model, sig)
        if not sig.exists():
            raise RuntimeError("model_signing wrote no signature")
        return sum(p.stat().st_size for p in _files(model))

    return run


def ms_verify_api(model: str, pub: str, sig: str) -> Timed:
    from model_signing import verifying

    cfg = verifying.Config().use_elliptic_key_verifier(public_key=pub)

    def run() -> int:
        cfg.verify(model, sig)
        return sum(p.stat().st_size for p in _files(model))

    return run


def _ms_cli() -> str:
    exe = VENV_BIN / "model_signing"
    if not exe.exists():
        raise Unavailable("model_signing CLI not installed")
    return str(exe)


def ms_sign_cli(model: str, key: str, out_dir: str) -> Timed:
    """``model_signing sign key`` as a subprocess (start-up included, as users run it)."""
    exe = _ms_cli()
    sig = Path(out_dir) / "model.sig"

    def run() -> int:
        cmd = [exe, "sign", "key", "--private_key", key, "--signature", str(sig), model]
        subprocess.run(cmd, check=True, capture_output=True)
        return sum(p.stat().st_size for p in _files(model))

    return run


def ms_verify_cli(model: str, pub: str, sig: str) -> Timed:
    exe = _ms_cli()

    def run() -> int:
        cmd = [exe, "verify", "key", "--public_key", pub, "--signature", sig, model]
        subprocess.run(cmd, check=True, capture_output=True)
        return sum(p.stat().st_size for p in _files(model))

    return run


# ------------------------------------------------------------------ S3 anchor


def boto3_st_load(bucket: str, prefix: str, names: list[str], expect: int | None = None) -> Timed:
    """boto3 ``download_fileobj`` (default transfer manager, threads) + safetensors ``load``.

    Endpoint and credentials come from the environment (``AWS_ENDPOINT_URL_S3`` ...).
    """
    import io

    import boto3
    from botocore.config import Config
    from safetensors.torch import load

    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))

    def run() -> int:
        out: dict[str, Any] = {}
        for name in names:
            buf = io.BytesIO()
            s3.download_fileobj(bucket, f"{prefix}{name}", buf)
            out.update(load(buf.getbuffer().tobytes()))
        _expect_tensors(out, expect, "boto3+safetensors")
        return _nbytes(out)

    return run


# ------------------------------------------------------------------ weightguard


def _wg(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} not available yet ({exc})") from None


def _wg_attr(module: str, attr: str) -> Any:
    mod = _wg(module)
    if not hasattr(mod, attr):
        raise Unavailable(f"{module}.{attr} not available yet")
    return getattr(mod, attr)


def wg_help() -> Timed:
    """``weightguard --help`` as a subprocess: the whole start-up a user sees."""
    exe = VENV_BIN / "weightguard"
    if not exe.exists():
        raise Unavailable("weightguard console script not installed (pip install -e .)")

    def run() -> int:
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        return 0

    return run


def wg_cli(args: list[str], model: str | None = None, env: dict[str, str] | None = None) -> Timed:
    """Any ``weightguard`` CLI command as a subprocess (exit code must be 0)."""
    exe = VENV_BIN / "weightguard"
    if not exe.exists():
        raise Unavailable("weightguard console script not installed")
    full_env = {**os.environ, **(env or {})}

    def run() -> int:
        p = subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env)
        if p.returncode != 0:
            if "No such command" in p.stderr or "ModuleNotFoundError" in p.stderr:
                raise Unavailable(f"weightguard {args[0]} not available yet")
            raise RuntimeError(f"weightguard {args[0]} exited {p.returncode}: {p.stderr[-500:]}")
        return sum(q.stat().st_size for q in _files(model)) if model else 0

    return run


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
