"""Signing test helpers: keys, CA chains, small models, model_signing CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# WEIGHTGUARD_INTEROP: where the vectors are when the checkout is not next to shared/.
INTEROP = Path(os.environ.get("WEIGHTGUARD_INTEROP") or ROOT.parent / "shared" / "interop")
MODEL_SIGNING = str(Path(sys.executable).with_name("model_signing"))


def write_key(tmp: Path, name: str, curve: str = "p256", password: bytes | None = None) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    c = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[curve]
    key = ec.generate_private_key(c)
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    (tmp / f"{name}.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    )
    (tmp / f"{name}.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def _cert(
    subject: str,
    key: Any,
    issuer: str,
    issuer_key: Any,
    *,
    ca: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def write_chain(
    tmp: Path,
    prefix: str = "",
    *,
    leaf_not_before: dt.datetime | None = None,
    leaf_not_after: dt.datetime | None = None,
) -> dict[str, Path]:
    """root -> intermediate -> leaf (P-256); returns the PEM paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = dt.datetime.now(dt.UTC)
    root_k = ec.generate_private_key(ec.SECP384R1())
    int_k = ec.generate_private_key(ec.SECP256R1())
    leaf_k = write_key(tmp, f"{prefix}leaf")
    long_ago, far = now - dt.timedelta(days=30), now + dt.timedelta(days=365)
    root = _cert(
        f"{prefix}root",
        root_k,
        f"{prefix}root",
        root_k,
        ca=True,
        not_before=long_ago,
        not_after=far,
    )
    inter = _cert(
        f"{prefix}intermediate",
        int_k,
        f"{prefix}root",
        root_k,
        ca=True,
        not_before=long_ago,
        not_after=far,
    )
    leaf = _cert(
        f"{prefix}signer",
        leaf_k,
        f"{prefix}intermediate",
        int_k,
        ca=False,
        not_before=leaf_not_before or now - dt.timedelta(days=1),
        not_after=leaf_not_after or far,
    )
    out = {}
    for name, c in (("root", root), ("intermediate", inter), ("leaf_cert", leaf)):
        p = tmp / f"{prefix}{name}.crt"
        p.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[name] = p
    out["leaf_key"] = tmp / f"{prefix}leaf.pem"
    return out


def make_model(directory: Path, *, tensors: int = 3) -> Path:
    """A small plain safetensors model directory (safetensors + config + tokenizer)."""
    import numpy as np
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    save_file(
        {
            f"layer{i}.weight": rng.standard_normal((64, 100)).astype(np.float32)
            for i in range(tensors)
        },
        str(directory / "model.safetensors"),
    )
    (directory / "config.json").write_text(json.dumps({"hidden": 64}))
    (directory / "tokenizer.json").write_text(json.dumps({"vocab": ["a", "b"]}))
    return directory


def model_signing(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODEL_SIGNING, *args], capture_output=True, text=True, timeout=120, check=False
    )


def payload_of(sig: Path) -> dict[str, Any]:
    import base64

    doc = json.loads(sig.read_text())
    return json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))


# --------------------------------------------------------------------------- tests
