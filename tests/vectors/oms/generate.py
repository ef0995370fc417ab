"""Regenerate the OMS interop vectors (tests/vectors/oms/README.md says how).

    python3 -m venv /tmp/ms-0.3.1 && /tmp/ms-0.3.1/bin/pip install model-signing==0.3.1 \\
        pyopenssl sigstore-protobuf-specs          # likewise 1.0.1; 1.1.1 needs pyopenssl
    .venv/bin/python tests/vectors/oms/generate.py /tmp/ms-0.3.1 /tmp/ms-1.0.1 /tmp/ms-1.1.1

Makes the keys (keys/: a P-384 signing key; a P-384 root CA, an intermediate CA and a
P-256 code-signing leaf), the small models of each case, and then, for each released
model_signing in its own venv, signs every case with it (ms_sign_judge.py) and records
that version's verdicts on the model and on its tampered copies in ``expected.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
KEYS = HERE / "keys"

# name: (kind, method, hash, shard_size, layout, ignore_git, ignore_paths)
CASES: dict[str, tuple[str, str, str, int, str, bool, list[str]]] = {
    "key-files-sha256": ("key", "files", "sha256", 0, "basic", True, []),
    "key-file-single": ("key", "files", "sha256", 0, "single", True, []),
    "key-files-blake2": ("key", "files", "blake2", 0, "basic", True, []),
    "key-files-blake3": ("key", "files", "blake3", 0, "basic", True, []),
    "key-shards-sha256": ("key", "shards", "sha256", 1000, "empty-file", True, []),
    "key-shards-blake2": ("key", "shards", "blake2", 1000, "basic", True, []),
    "key-git-paths": ("key", "files", "sha256", 0, "git", False, []),
    "key-colon-name": ("key", "files", "sha256", 0, "colon", True, []),
    "key-ignore-paths": ("key", "files", "sha256", 0, "extra", True, ["notes.txt"]),
    "key-ignore-weights": ("key", "files", "sha256", 0, "extra", True, ["extra.safetensors"]),
    "cert-files-sha256": ("cert", "files", "sha256", 0, "basic", True, []),
    "cert-shards-sha256": ("cert", "shards", "sha256", 1000, "basic", True, []),
}


def _safetensors(n_floats: int, seed: int) -> bytes:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}},
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)
    data = bytes((seed * 31 + i * 7) % 251 for i in range(4 * n_floats))
    return struct.pack("<Q", len(header)) + header + data


def make_model(dest: Path, layout: str) -> None:
    if layout == "single":
        dest.write_bytes(_safetensors(700, 1))
        return
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(_safetensors(700, 1))  # 2.9 KB: 3 shards
    (dest / "config.json").write_text('{"model_type": "tiny"}\n')
    (dest / "sub").mkdir()
    (dest / "sub" / "tokenizer.json").write_text('{"vocab": ["a", "b"]}\n')
    if layout == "empty-file":
        (dest / "empty.txt").write_bytes(b"")
    if layout == "git":
        (dest / ".git").mkdir()
        (dest / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        (dest / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    if layout == "colon":
        (dest / "a:b.txt").write_text("colon in the name\n")
    if layout == "extra":
        (dest / "notes.txt").write_text("ignored by the signer\n")
        (dest / "extra.safetensors").write_bytes(_safetensors(8, 2))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_keys() -> None:
    KEYS.mkdir(exist_ok=True)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2045, 1, 1, tzinfo=dt.UTC)
    key = ec.generate_private_key(ec.SECP384R1())
    (KEYS / "key.pem").write_bytes(_pem(key))
    (KEYS / "key-pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    def cert(subject, issuer, pub, signer, *, ca: bool, path_len=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
        if issuer != subject:
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        return b.sign(signer, hashes.SHA384())

    root = ec.generate_private_key(ec.SECP384R1())
    inter = ec.generate_private_key(ec.SECP384R1())
    leaf = ec.generate_private_key(ec.SECP256R1())
    certs = {
        "root-cert.pem": cert(
            "wg-interop-root", "wg-interop-root", root.public_key(), root, ca=True
        ),
        "int-cert.pem": cert(
            "wg-interop-intermediate",
            "wg-interop-root",
            inter.public_key(),
            root,
            ca=True,
            path_len=0,
        ),
        "leaf-cert.pem": cert(
            "wg-interop-leaf", "wg-interop-intermediate", leaf.public_key(), inter, ca=False
        ),
    }
    for name, c in certs.items():
        (KEYS / name).write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (KEYS / "leaf.pem").write_bytes(_pem(leaf))


def main(venvs: list[str]) -> None:
    if not (KEYS / "key.pem").exists():
        make_keys()
    expected: dict = {}
    for venv in venvs:
        py = Path(venv) / "bin" / "python"
        version = subprocess.run(
            [py, "-c", "import importlib.metadata as m; print(m.version('model-signing'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        vdir = HERE / f"ms-{version}"
        shutil.rmtree(vdir, ignore_errors=True)
        for case, (kind, method, hsh, shard, layout, ignore_git, ignore) in CASES.items():
            cdir = vdir / case
            cdir.mkdir(parents=True)
            make_model(cdir / "model", layout)
            spec = {
                "case_dir": str(cdir),
                "kind": kind,
                "method": method,
                "hash": hsh,
                "shard_size": shard,
                "ignore_git": ignore_git,
                "ignore_paths": ignore,
                "keys": str(KEYS),
            }
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(spec, f)
            r = subprocess.run(
                [py, HERE / "ms_sign_judge.py", f.name], capture_output=True, text=True
            )
            Path(f.name).unlink()
            try:
                res = json.loads(r.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                res = {"error": (r.stderr.strip().splitlines() or ["no output"])[-1][:300]}
            if "error" in res:
                shutil.rmtree(cdir)
                print(f"{version} {case}: cannot sign: {res['error']}")
                continue
            spec.pop("case_dir")
            spec.pop("keys")
            expected.setdefault(version, {})[case] = {**spec, **res}
            print(f"{version} {case}: {res['verdicts']['guess']['original']}")
    out = HERE / "expected.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(expected)
    out.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
