"""`weightguard doctor` against the real local OpenBao and SeaweedFS, good and bad config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import OpenBaoServer, SeaweedS3Server, free_port
from weightguard.doctor import Check, check_shm, run_checks, summarize
from weightguard.errors import ConfigError


def _by_name(results: list[Check]) -> dict[str, Check]:
    return {r.name: r for r in results}


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "AWS_", "WEIGHTGUARD_"))
    }
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true")
    env.update(extra)
    return env


def _doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightguard_cli", "doctor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def no_aws_home(clean_service_env: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    clean_service_env.setenv("HOME", str(tmp_path))
    clean_service_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    clean_service_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    clean_service_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    return clean_service_env


def test_local_checks() -> None:
    results = _by_name(run_checks(only=["python", "cryptography", "torch", "shm"]))
    assert results["python"].status == "ok"
    assert sys.version.split()[0] in results["python"].detail
    assert results["cryptography"].status == "ok"
    assert "decrypt_into" in results["cryptography"].detail
    assert results["torch"].status == "ok" and "torch " in results["torch"].detail
    import torch

    if torch.cuda.is_available():
        assert results["cuda"].status == "ok"
        assert torch.cuda.get_device_name(0) in results["cuda"].detail
    else:
        assert results["cuda"].status == "warn"
    assert results["shm"].status in ("ok", "warn")


def test_shm_parsing(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("overlay / overlay rw 0 0\nshm /dev/shm ext4 rw 0 0\n")
    (shm,) = check_shm(str(mounts))
    assert shm.status == "warn" and "not tmpfs" in shm.detail
    mounts.write_text("overlay / overlay rw 0 0\n")
    (shm,) = check_shm(str(mounts))
    assert shm.status == "warn" and "not mounted" in shm.detail


def test_vault_and_s3_good(
    openbao: OpenBaoServer, s3: SeaweedS3Server, bucket: str, no_aws_home: pytest.MonkeyPatch
) -> None:
    token = openbao.create_token(["default"], ttl="2h")
    no_aws_home.setenv("VAULT_ADDR", openbao.addr)
    no_aws_home.setenv("VAULT_TOKEN", token)
    for k, v in s3.env().items():
        no_aws_home.setenv(k, v)
    results = _by_name(run_checks(only=["vault", "s3"]))
    assert results["vault"].status == "ok", results["vault"]
    assert "reachable, unsealed" in results["vault"].detail
    assert results["vault.auth"].status == "ok", results["vault.auth"]
    assert "token valid" in results["vault.auth"].detail
    assert "policies default" in results["vault.auth"].detail
    assert results["s3"].status == "ok", results["s3"]
    assert s3.endpoint in results["s3"].detail
    assert _by_name(run_checks(only=["s3"], bucket=bucket))["s3"].detail.endswith(
        f"bucket {bucket} reachable"
    )
    blob = json.dumps(summarize(list(results.values())))
    assert token not in blob and s3.secret_key not in blob


def test_vault_unreachable_and_bad_token(
    openbao: OpenBaoServer, no_aws_home: pytest.MonkeyPatch
) -> None:
    port = free_port()
    no_aws_home.setenv("VAULT_ADDR", f"http://127.0.0.1:{port}")
    no_aws_home.setenv("VAULT_TOKEN", "hvs.secret-value-123")
    results = run_checks(only=["vault"])
    assert [(r.name, r.status) for r in results] == [("vault", "fail")]
    assert f"cannot reach Vault at http://127.0.0.1:{port}" in results[0].detail

    no_aws_home.setenv("VAULT_ADDR", openbao.addr)
    results = _by_name(run_checks(only=["vault"]))
    assert results["vault"].status == "ok"
    assert results["vault.auth"].status == "fail"
    assert "denied" in results["vault.auth"].detail
    assert "hvs.secret-value-123" not in results["vault.auth"].detail

    no_aws_home.delenv("VAULT_TOKEN")
    results = _by_name(run_checks(only=["vault"]))
    assert results["vault.auth"].status == "fail"
    assert "no Vault credentials configured" in results["vault.auth"].detail


def test_s3_bad_secret_and_no_credentials(
    s3: SeaweedS3Server, no_aws_home: pytest.MonkeyPatch
) -> None:
    env = s3.env()
    no_aws_home.setenv("AWS_ENDPOINT_URL_S3", env["AWS_ENDPOINT_URL_S3"])
    (res,) = run_checks(only=["s3"])
    assert res.status == "fail" and res.detail.startswith(f"no S3 credentials for {s3.endpoint}")

    no_aws_home.setenv("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"])
    no_aws_home.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    (res,) = run_checks(only=["s3"])
    assert res.status == "fail" and "SignatureDoesNotMatch" in res.detail

    no_aws_home.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    (res,) = run_checks(only=["s3"], timeout=2)
    assert res.status == "fail" and res.detail.startswith("cannot reach S3 endpoint")


def test_unknown_check_name() -> None:
    with pytest.raises(ConfigError, match="unknown check"):
        run_checks(only=["bogus"])


def test_cli_json_good(openbao: OpenBaoServer, s3: SeaweedS3Server, tmp_path: Path) -> None:
    env = _cli_env(tmp_path, **openbao.env(), **s3.env())
    proc = _doctor(env, "--json", "--check", "vault", "--check", "s3", "--check", "python")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    assert {c["name"]: c["status"] for c in data["checks"]} == {
        "python": "ok",
        "vault": "ok",
        "vault.auth": "ok",
        "s3": "ok",
    }
    assert openbao.root_token not in proc.stdout + proc.stderr
    assert s3.secret_key not in proc.stdout + proc.stderr


def test_cli_bad_config_one_line_per_check(tmp_path: Path) -> None:
    env = _cli_env(
        tmp_path,
        VAULT_ADDR=f"http://127.0.0.1:{free_port()}",
        VAULT_TOKEN="hvs.do-not-print-me",
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{free_port()}",
    )
    proc = _doctor(env, "--check", "vault", "--check", "s3")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "do-not-print-me" not in proc.stderr + proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("FAIL  vault") and "cannot reach Vault" in lines[0]
    assert lines[1].startswith("FAIL  s3") and "no S3 credentials" in lines[1]
    assert "0 ok, 0 warning(s), 2 failure(s)" in proc.stderr


def test_cli_unknown_check_is_one_error_line(tmp_path: Path) -> None:
    proc = _doctor(_cli_env(tmp_path), "--check", "bogus")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: unknown check(s): bogus")
    assert "Traceback" not in proc.stderr


def test_audit_check_says_what_an_unsigned_log_cannot_prove(tmp_path: Path) -> None:
    from weightguard._internal.audit.checkpoint import generate_ed25519_keypair

    (res,) = run_checks(only=["audit"], environ={"WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "a")})
    assert res.status == "warn" and "checkpoints are NOT signed" in res.detail
    assert "proves nothing against whoever can write it" in res.detail
    assert "--allow-unsigned" in res.detail
    key = tmp_path / "ck.pem"
    generate_ed25519_keypair(str(key), str(key) + ".pub")
    env = {"WEIGHTGUARD_AUDIT_LOG": "-", "WEIGHTGUARD_AUDIT_SIGNING_KEY": str(key)}
    (res,) = run_checks(only=["audit"], environ=env)
    assert res.status == "warn" and "no anchor" in res.detail and "ed25519:" in res.detail
    env["WEIGHTGUARD_AUDIT_ANCHOR"] = "s3://anchors/prod"
    (res,) = run_checks(only=["audit"], environ=env)
    assert res.status == "ok" and "anchored at s3://anchors/prod" in res.detail
    env["WEIGHTGUARD_AUDIT_SIGNING_KEY"] = str(tmp_path / "missing.pem")
    (res,) = run_checks(only=["audit"], environ=env)
    assert res.status == "fail" and "cannot read audit checkpoint key" in res.detail
