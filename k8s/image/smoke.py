"""Build-time smoke test of the loader image: release a tiny model, verify and load it.

`import weightguard` proves nothing (imports are lazy), so this runs what the image is
for: encrypt, sign (blake3 chunk digests), verify, the secure loader's verify + decrypt
+ load into torch tensors, and the `weightguard` console script; it imports the
remaining lazily used dependencies (scipy for the watermark).  An image whose
dependency set misses a package fails its build here instead of its first pod.
The Dockerfile runs it after install.sh; tests/packaging/test_image.py runs it in the
virtualenv built the same way.  Exit status 0 and one `smoke: ok` line, or a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _expect(ok: bool, what: str) -> None:
    if not ok:  # not `assert`: this must hold under python -O as well
        raise SystemExit(f"smoke: failed: {what}")


def main() -> int:
    import importlib

    import torch
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from safetensors.torch import save_file

    import weightguard
    from weightguard.crypt import create_key_file, encrypt_model
    from weightguard.policy import PublicKey
    from weightguard.signing import KeySigner, sign_model, verify_bundle

    for module in ("numpy", "scipy.stats", "scipy.optimize", "blake3", "hvac", "boto3"):
        importlib.import_module(module)

    with tempfile.TemporaryDirectory(prefix="wg-smoke-") as tmp:
        work = Path(tmp)
        os.environ["WEIGHTGUARD_AUDIT_LOG"] = str(work / "audit.jsonl")
        model = work / "model"
        model.mkdir()
        original = {
            "embed.weight": torch.arange(4096, dtype=torch.float32).reshape(64, 64) / 7,
            "head.bias": torch.arange(64, dtype=torch.int32),
        }
        save_file(original, str(model / "model.safetensors"))
        (model / "config.json").write_text('{"model_type": "smoke"}')

        key = work / "dev.key"
        create_key_file(key)
        release = work / "release"
        encrypt_model(model, release, f"file://{key}")

        private = ec.generate_private_key(ec.SECP256R1())
        signing = work / "signing.pem"
        signing.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public = work / "signing.pub"
        public.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        signature = release / "model.sig"
        sign_model(release, signature, KeySigner.from_file(signing))
        verify_bundle(release, signature, PublicKey.from_file(public))

        # the caller names its key (a file:// reference in a header is never taken on trust)
        loaded = weightguard.load_file(
            release, "cpu", policy=PublicKey.from_file(public), key=f"file://{key}"
        )
        _expect(loaded.keys() == original.keys(), f"loaded tensors {sorted(loaded)}")
        for name, tensor in original.items():
            _expect(torch.equal(loaded[name], tensor), f"{name} differs after the load")

        # The console script, on the artifact (no key needed to read its public header).
        cli = Path(sys.executable).with_name("weightguard")
        res = subprocess.run(
            [str(cli), "inspect", str(release / "model.safetensors")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        _expect(res.returncode == 0 and "weightguard artifact" in res.stdout, res.stderr)

        events = [
            json.loads(line)["event"]
            for line in (work / "audit.jsonl").read_text().splitlines()
            if line.startswith("{")
        ]
        _expect("load.ok" in events, f"audit events {events}")
    print(f"smoke: ok (weightguard {weightguard.__version__}, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
