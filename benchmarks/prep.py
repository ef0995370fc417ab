"""Untimed preparation shared by the cases: keys, signatures, encrypted copies, S3 upload.

Everything is cached under ``benchmarks/work/prep/`` and keyed by the model directory's
spec stamp, so a second run reuses it.  A weightguard step whose API has not landed yet
records its reason instead of failing; the matching variant is then reported as
"not available yet".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.harness import WORK, Unavailable

PREP = WORK / "prep"
STATE = PREP / "state.json"
S3_BUCKET = "wg-bench"


def tensor_count(model_dir: Path) -> int:
    n = 0
    for f in models.weight_files(model_dir):
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        n += sum(1 for k in header if k != "__metadata__")
    return n


def _model_id(model_dir: Path) -> str:
    stamp = model_dir.parent / f"{model_dir.name}.spec.json"
    raw = stamp.read_bytes() if stamp.exists() else str(model_dir).encode()
    return model_dir.name + "-" + hashlib.sha256(raw).hexdigest()[:8]


_WG_SOURCES = {
    "sign": ("signing.py", "_internal/signing/oms.py", "_internal/signing/hashing.py"),
    "encrypt": ("crypt.py", "_internal/format/layout.py", "_internal/keys/providers.py"),
    "watermark": ("watermark.py", "_internal/watermark/scheme.py", "_internal/watermark/io.py"),
    "audit": ("audit.py", "_internal/audit/record.py", "_internal/audit/checkpoint.py"),
}


def _fingerprint(*kinds: str) -> str:
    """Digest of the weightguard sources that shape a prepared artifact: when another
    engineer changes the format or the bundle layout, the cached copy is rebuilt."""
    root = Path(__file__).resolve().parent.parent / "weightguard"
    h = hashlib.sha256()
    for kind in kinds:
        for rel in _WG_SOURCES[kind]:
            # A moved module must fail here, not hash as missing: a cache keyed on a
            # file that no longer exists would never be rebuilt.
            h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()[:16]


def _fresh(marker: Path, *kinds: str) -> bool:
    return marker.exists() and marker.read_text().strip() == _fingerprint(*kinds)


def cuda_problem() -> str | None:
    """None when CUDA works, else why not (checked in a subprocess: torch import is slow)."""
    code = (
        "import torch,sys\n"
        "ok=torch.cuda.is_available()\n"
        "print(torch.cuda.get_device_name(0) if ok else 'torch.cuda.is_available() is False "
        "(torch '+torch.__version__+')')\n"
        "sys.exit(0 if ok else 1)\n"
    )
    try:
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if p.returncode != 0:
        return (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr) else "?"
    return None


def _err(exc: BaseException) -> str:
    if isinstance(exc, Unavailable):
        msg = str(exc)
        return msg if msg.startswith("not available yet") else f"not available yet: {msg}"
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class Prepared:
    key_uri: str = ""
    error: str | None = None  # weightguard key/encrypt setup problem
    signing: dict[str, str] = field(default_factory=dict)
    ms_sig: dict[str, str] = field(default_factory=dict)  # model dir -> model_signing bundle
    wg_sig: dict[str, str] = field(default_factory=dict)  # model dir -> weightguard bundle
    tensorizer: dict[str, str] = field(default_factory=dict)  # model dir -> .tensors
    cryptotensors: dict[str, str] = field(default_factory=dict)  # model dir -> copy dir
    wg_models: dict[str, dict[str, Any]] = field(default_factory=dict)  # encrypted + signed
    watermarked: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load_or_init(cls) -> Prepared:
        PREP.mkdir(parents=True, exist_ok=True)
        p = cls()
        p._signing_keys()
        p._wg_key()
        return p

    def save(self) -> None:
        STATE.write_text(json.dumps(asdict(self), indent=1))

    # -- keys
    def _signing_keys(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        priv, pub = PREP / "ec-p256.pem", PREP / "ec-p256.pub.pem"
        if not priv.exists() or not pub.exists():
            k = ec.generate_private_key(ec.SECP256R1())
            priv.write_bytes(
                k.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            pub.write_bytes(
                k.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        self.signing = {"priv": str(priv), "pub": str(pub)}

    def _wg_key(self) -> None:
        from benchmarks import wg_ops

        try:
            self.key_uri = wg_ops.make_file_key(PREP / "keyring")
            self.error = None
        except Exception as exc:
            self.key_uri, self.error = "", _err(exc)

    # -- signing
    def prepare_signing(self, model_dir: Path, anchor: bool = True) -> None:
        from benchmarks import wg_ops

        d = str(model_dir)
        out = PREP / _model_id(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        ms = out / "model_signing.sig"
        if anchor and not ms.exists():
            from model_signing import signing

            signing.Config().use_elliptic_key_signer(private_key=self.signing["priv"]).sign(
                model_dir, ms
            )
        self.ms_sig[d] = str(ms) if ms.exists() else ""
        wg = out / "weightguard.sig"
        marker = out / "weightguard.sig.done"
        try:
            if not _fresh(marker, "sign"):
                wg_ops.sign(d, self.signing["priv"], str(out), name="weightguard.sig")()
                marker.write_text(_fingerprint("sign"))
            self.wg_sig[d] = str(wg)
        except Exception as exc:
            self.wg_sig[d] = ""
            print(f"   prep: weightguard sign of {model_dir.name}: {_err(exc)}", flush=True)

    # -- loads
    def prepare_load(self, model_dir: Path) -> None:
        from benchmarks import ops

        d = str(model_dir)
        out = PREP / _model_id(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tensorizer[d] = str(ops.tensorizer_prepare(d, str(out / "model.tensors")))
        try:
            self.cryptotensors[d] = str(ops.cryptotensors_prepare(d, str(out / "cryptotensors")))
        except Exception as exc:  # optional anchor: its variant reports "unavailable"
            self.cryptotensors[d] = ""
            print(f"   prep: CryptoTensors copy of {model_dir.name}: {_err(exc)}", flush=True)
        self.prepare_encrypted(model_dir)

    def prepare_encrypted(self, model_dir: Path) -> dict[str, Any]:
        """The encrypted + signed copy alone (``benchmarks.stages`` needs nothing else)."""
        from benchmarks import wg_ops

        d = str(model_dir)
        out = PREP / _model_id(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        enc = out / "encrypted"
        info: dict[str, Any] = {"dir": "", "sig": ""}
        try:
            if self.error:
                raise Unavailable(self.error)
            done = out / "encrypted.done"  # outside: the signature covers the whole dir
            if not _fresh(done, "encrypt", "sign"):
                if enc.exists():
                    shutil.rmtree(enc)
                wg_ops.encrypt_model(d, str(enc), self.key_uri)
                wg_ops.sign(str(enc), self.signing["priv"], str(out), name="encrypted.sig")()
                done.write_text(_fingerprint("encrypt", "sign"))
            info = {"dir": str(enc), "sig": str(out / "encrypted.sig")}
        except Exception as exc:
            info["error"] = _err(exc)
            print(f"   prep: weightguard encrypt/sign of {model_dir.name}: {info['error']}")
        self.wg_models[d] = info
        return info

    # -- watermark / audit
    def prepare_watermark(self, model_dir: Path) -> None:
        from benchmarks import wg_ops

        out = PREP / _model_id(model_dir) / "watermarked"
        try:
            key = wg_ops.watermark_key(PREP)
            done = out.with_name("watermarked.done")
            if not _fresh(done, "watermark"):
                if out.exists():
                    shutil.rmtree(out)
                wg_ops.watermark_embed(str(model_dir), str(out), str(key))
                done.write_text(_fingerprint("watermark"))
            self.watermarked = {"dir": str(out), "key": str(key)}
        except Exception as exc:
            self.watermarked = {"dir": "", "error": _err(exc)}
            print(f"   prep: watermark embed: {self.watermarked['error']}", flush=True)

    def prepare_audit(self, events: int) -> None:
        from benchmarks import wg_ops

        out = PREP / f"audit-{events}"
        try:
            if not _fresh(out / ".done", "audit"):
                if out.exists():
                    shutil.rmtree(out)
                out.mkdir(parents=True)
                wg_ops.audit_generate(str(out), events)
                (out / ".done").write_text(_fingerprint("audit"))
            log = out / "audit.jsonl"
            self.audit = {"log": str(log), "bytes": log.stat().st_size, "events": events}
        except Exception as exc:
            self.audit = {"log": "", "error": _err(exc)}
            print(f"   prep: audit log: {self.audit['error']}", flush=True)


class S3Context:
    """Parent-side: start SeaweedFS on loopback, upload plain + encrypted copies, export env."""

    def __init__(self, model_dir: Path, wg: dict[str, Any]) -> None:
        self.model_dir = model_dir
        self.wg = wg
        self.server: Any = None
        self.saved_env: dict[str, str | None] = {}

    def __enter__(self) -> S3Context:
        from tests.support.services import SeaweedS3Server

        self.server = SeaweedS3Server()
        self.server.__enter__()
        try:
            self.server.make_bucket(S3_BUCKET)
            s3 = self.server.client()
            for f in models.weight_files(self.model_dir):
                s3.upload_file(str(f), S3_BUCKET, f"plain/{f.name}")
            if self.wg.get("dir"):
                for f in sorted(Path(self.wg["dir"]).iterdir()):
                    if f.is_file():
                        s3.upload_file(str(f), S3_BUCKET, f"enc/{f.name}")
            for k, v in self.server.env().items():
                self.saved_env[k] = os.environ.get(k)
                os.environ[k] = v
        except Exception:
            traceback.print_exc()
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.server is not None:
            self.server.__exit__(None, None, None)
            self.server = None
