"""`weightguard sign` / `weightguard verify` command line."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.signing import make_model, model_signing, write_chain, write_key

WG = [sys.executable, "-m", "weightguard_cli"]


def wg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [*WG, *args], capture_output=True, text=True, timeout=120, env=e, check=False
    )


def test_cli_key_sign_verify_text_and_json(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k", password=b"pw")
    r = wg(
        "sign",
        str(model),
        "--signature",
        str(tmp_path / "m.sig"),
        "--signing-key",
        str(tmp_path / "k.pem"),
        "--password-env",
        "WG_TEST_PW",
        env={"WG_TEST_PW": "pw"},
    )
    assert r.returncode == 0, r.stderr
    assert "signed 3 file(s)" in r.stdout
    (model / "README.md").write_text("hi")
    r = wg(
        "verify",
        str(model),
        "--signature",
        str(tmp_path / "m.sig"),
        "--trust-key",
        str(tmp_path / "k.pub"),
        "--allow-unsigned",
        "*.md",
    )
    assert r.returncode == 0, r.stderr
    assert "signer:  EC P-256 key sha256:" in r.stdout
    assert "time:    " in r.stdout and "(signer-claim)" in r.stdout
    assert "covered: 3 file(s)" in r.stdout
    assert "present but NOT covered: 1 file(s)\n  README.md" in r.stdout
    r = wg(
        "verify",
        str(model),
        "--signature",
        str(tmp_path / "m.sig"),
        "--trust-key",
        str(tmp_path / "k.pub"),
        "--allow-unsigned",
        "*.md",
        "--json",
    )
    out = json.loads(r.stdout)
    assert out["verified"] is True and out["uncovered"] == ["README.md"]
    assert out["covered"] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert out["files"]["model.safetensors"]["chunked"] is True
    # an unsigned extra file without --allow-unsigned: one error line, exit 1
    r = wg(
        "verify",
        str(model),
        "--signature",
        str(tmp_path / "m.sig"),
        "--trust-key",
        str(tmp_path / "k.pub"),
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error: files not covered by signature") and "README.md" in r.stderr


def test_cli_password_env_missing(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k", password=b"pw")
    r = wg(
        "sign",
        str(model),
        "--signature",
        str(tmp_path / "m.sig"),
        "--signing-key",
        str(tmp_path / "k.pem"),
        "--password-env",
        "WG_NOT_SET_ANYWHERE",
    )
    assert r.returncode == 1 and "WG_NOT_SET_ANYWHERE" in r.stderr
    assert not (tmp_path / "m.sig").exists()


def test_cli_certificate_chain(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    c = write_chain(tmp_path)
    r = wg(
        "sign",
        str(model),
        "--signature",
        str(tmp_path / "c.sig"),
        "--signing-cert",
        str(c["leaf_cert"]),
        "--signing-chain",
        str(c["intermediate"]),
        "--signing-key",
        str(c["leaf_key"]),
    )
    assert r.returncode == 0, r.stderr
    r = wg(
        "verify",
        str(model),
        "--signature",
        str(tmp_path / "c.sig"),
        "--trust-chain",
        str(c["root"]),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["signer"].startswith("certificate CN=signer")
    other = write_chain(tmp_path, "o-")
    r = wg(
        "verify",
        str(model),
        "--signature",
        str(tmp_path / "c.sig"),
        "--trust-chain",
        str(other["root"]),
    )
    assert r.returncode == 1 and "no path from CN=signer" in r.stderr


def test_cli_usage_errors(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k")
    r = wg("sign", str(model), "--signature", str(tmp_path / "m.sig"))
    assert r.returncode == 2 and "choose exactly one signer" in r.stderr
    (tmp_path / "m.sig").write_text("{}")
    r = wg("verify", str(model), "--signature", str(tmp_path / "m.sig"))
    assert r.returncode == 2 and "trust anchor" in r.stderr


def test_cli_sign_chunk_size_is_a_size(tmp_path: Path) -> None:
    """--chunk-size takes what encrypt's does: 64KiB, 64k or 65536 bytes."""
    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k")
    for size in ("64KiB", "65536"):
        sig = tmp_path / f"{size}.sig"
        args = ["--signature", str(sig), "--signing-key", str(tmp_path / "k.pem")]
        r = wg("sign", str(model), *args, "--chunk-size", size, "--json")
        assert r.returncode == 0, r.stderr
        stride = json.loads(
            base64.b64decode(json.loads(sig.read_bytes())["dsseEnvelope"]["payload"])
        )["predicate"]["weightguard"]["files"]["model.safetensors"]["stride"]
        assert stride == 65536
    r = wg("sign", str(model), "--signing-key", str(tmp_path / "k.pem"), "--chunk-size", "lots")
    assert r.returncode == 2 and "'lots' is not a size" in r.stderr


def test_cli_sigstore_vector_offline() -> None:
    from tests.support.signing import INTEROP

    v = INTEROP / "model-signing-v1.1.0" / "v1.1.0-sigstore"
    if not v.is_dir():
        pytest.skip("interop vectors not present")
    r = wg(
        "verify",
        str(v),
        "--signature",
        str(v / "model.sig"),
        "--identity",
        "stefanb@us.ibm.com",
        "--issuer",
        "https://sigstore.verify.ibm.com/oauth2",
        "--offline",
    )
    assert r.returncode == 0, r.stderr
    assert "2025-10-10T02:12:20Z (transparency-log)" in r.stdout
    assert "present but NOT covered: 1 file(s)\n  ignore-me" in r.stdout


def test_cli_vault_transit(tmp_path: Path, openbao: Any, new_name: Callable[[str], str]) -> None:
    client = openbao.client()
    name = new_name("cli")
    client.secrets.transit.create_key(name=name, key_type="ecdsa-p256", mount_point="transit")
    model = make_model(tmp_path / "m")
    env = openbao.env()
    r = wg(
        "sign",
        str(model),
        "--signature",
        str(tmp_path / "v.sig"),
        "--signing-vault-key",
        f"vault://transit/{name}",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert openbao.root_token not in r.stdout + r.stderr
    r = wg(
        "verify",
        str(model),
        "--signature",
        str(tmp_path / "v.sig"),
        "--vault-key",  # the old spelling of --trust-vault-key, for one release
        f"vault://transit/{name}",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "warning: --vault-key is deprecated here; use --trust-vault-key" in r.stderr
    assert f"vault://transit/{name} v1" in r.stdout
    pem = client.secrets.transit.read_key(name=name, mount_point="transit")["data"]["keys"]["1"][
        "public_key"
    ]
    (tmp_path / "t.pub").write_text(pem)
    r2 = model_signing(
        "verify",
        "key",
        str(model),
        "--signature",
        str(tmp_path / "v.sig"),
        "--public_key",
        str(tmp_path / "t.pub"),
    )
    assert r2.returncode == 0, r2.stdout + r2.stderr


def test_cli_verify_check_chunk_digests(tmp_path: Path) -> None:
    """verify proves the files by their resource digests; --check-chunk-digests also
    refuses a (trusted) signer whose chunk digests disagree with them, naming the chunk."""
    from click.testing import CliRunner
    from weightguard_cli.main import cli

    from tests.support.signing import payload_of
    from weightguard.errors import IntegrityError
    from weightguard.signing import KeySigner, sign_model

    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k")
    signer, sig = KeySigner.from_file(tmp_path / "k.pem"), tmp_path / "m.sig"
    sign_model(model, sig, signer, chunk_size=4096)
    payload = payload_of(sig)
    d = payload["predicate"]["weightguard"]["files"]["model.safetensors"]["digests"]
    d[1], d[2] = d[2], d[1]
    sig.write_bytes(signer.make_bundle(json.dumps(payload).encode()))
    args = ["verify", str(model), "--signature", str(sig), "--trust-key", str(tmp_path / "k.pub")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, [*args, "--check-chunk-digests"])
    assert isinstance(r.exception, IntegrityError) and r.exception.chunk == 1
    assert "content differs from the signed digest [model.safetensors, chunk 1]" in str(r.exception)
