"""`weightguard audit verify|show|keygen` through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from weightguard_cli._audit_opt import audit_option
from weightguard_cli.cmd_audit import audit

from weightguard.audit import AuditLog

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "cli")])
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "weightguard_cli", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=60,
    )


@pytest.fixture
def signed_log(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "ck.pem"
    r = run_cli("audit", "keygen", str(key), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["key_id"].startswith("ed25519:") and info["public_key"] == str(key) + ".pub"
    log = tmp_path / "audit.jsonl"
    with AuditLog(str(log), signing_key=str(key), checkpoint_every=50) as w:
        w.emit("load.start", object={"uri": "s3://models/llama/model.safetensors"})
        w.emit("key.unwrap", object={"key_id": "vault://transit/llama", "key_version": 2})
        w.emit(
            "load.ok",
            object={"uri": "s3://models/llama/model.safetensors"},
            bytes=4096,
            duration_s=1.5,
        )
        w.emit(
            "load.denied",
            outcome="denied",
            reason="signature does not cover model-00002.safetensors",
            object={"uri": "s3://models/other/model.safetensors"},
            subject={"k8s_namespace": "ml", "k8s_pod": "evil-pod"},
        )
    return log, Path(str(key) + ".pub")


def test_verify_ok_and_json(signed_log: tuple[Path, Path]) -> None:
    log, pub = signed_log
    r = run_cli("audit", "verify", str(log), "--checkpoint-key", str(pub))
    assert r.returncode == 0, r.stderr
    assert (
        r.stdout.startswith("OK: log ")
        and "5 records" in r.stdout
        and "1/1 checkpoints verified" in r.stdout
    )
    assert "no anchor given" in r.stderr
    r = run_cli("audit", "verify", str(log), "--checkpoint-key", str(pub), "--json")
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["records"] == 5 and out["problem"] is None


def test_verify_reports_first_broken_record(signed_log: tuple[Path, Path]) -> None:
    log, pub = signed_log
    ls = log.read_bytes().splitlines(keepends=True)
    ls[1], ls[2] = ls[2], ls[1]
    log.write_bytes(b"".join(ls))
    r = run_cli("audit", "verify", str(log), "--checkpoint-key", str(pub))
    assert r.returncode == 1
    assert r.stdout.startswith("BROKEN (reordered)") and f"{log}:2" in r.stdout
    r = run_cli("audit", "verify", str(log), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["ok"] is False and out["problem"]["kind"] == "reordered"
    assert out["problem"]["line"] == 2 and out["problem"]["seq"] == 2


def test_verify_usage_errors(signed_log: tuple[Path, Path], tmp_path: Path) -> None:
    log, pub = signed_log
    r = run_cli(
        "audit",
        "verify",
        str(log),
        "--checkpoint-key",
        str(pub),
        "--vault-key",
        "vault://transit/x",
    )
    assert r.returncode == 2 and "not both" in r.stderr
    r = run_cli("audit", "verify", str(tmp_path / "missing.jsonl"))
    assert (
        r.returncode == 1
        and r.stderr.startswith("error: audit log")
        and "does not exist" in r.stderr
    )


def test_show_table_and_filters(signed_log: tuple[Path, Path]) -> None:
    log, _ = signed_log
    r = run_cli("audit", "show", str(log))
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].split()[:4] == ["TIME", "SEQ", "EVENT", "OUTCOME"]
    assert len(rows) == 5 and "4 event(s)" in r.stderr
    assert "key=vault://transit/llama@v2" in r.stdout and "ml/evil-pod" in r.stdout
    assert "4096 B; 1.500 s" in r.stdout
    r = run_cli("audit", "show", str(log), "--outcome", "denied", "--json")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["event"] for x in recs] == ["load.denied"]
    assert recs[0]["reason"] == "signature does not cover model-00002.safetensors"
    r = run_cli("audit", "show", str(log), "--artifact", "models/llama", "--json")
    assert [json.loads(x)["event"] for x in r.stdout.splitlines()] == ["load.start", "load.ok"]
    r = run_cli("audit", "show", str(log), "--subject", "evil-pod", "--json")
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == [3]
    r = run_cli("audit", "show", str(log), "--since", "1h", "--event", "load.*", "--json")
    assert len(r.stdout.splitlines()) == 3
    r = run_cli("audit", "show", str(log), "--since", "2999-01-01", "--json")
    assert r.stdout == ""
    r = run_cli("audit", "show", str(log), "--since", "yesterday")
    assert r.returncode == 2 and "--since" in r.stderr
    r = run_cli("audit", "show", str(log), "--checkpoints", "--json")
    assert json.loads(r.stdout.splitlines()[-1])["event"] == "checkpoint"


def test_audit_option_reads_env(tmp_path: Path) -> None:
    @click.command()
    @audit_option
    def cmd(audit_log: str | None) -> None:
        with AuditLog.open(audit_log) as log:
            log.emit("fetch")

    p = tmp_path / "via-env.jsonl"
    res = CliRunner().invoke(cmd, [], env={"WEIGHTGUARD_AUDIT_LOG": str(p)})
    assert res.exit_code == 0, res.output
    q = tmp_path / "via-opt.jsonl"
    res = CliRunner().invoke(cmd, ["--audit-log", str(q)], env={"WEIGHTGUARD_AUDIT_LOG": str(p)})
    assert res.exit_code == 0
    assert (
        json.loads(p.read_text())["event"] == "fetch"
        and json.loads(q.read_text())["event"] == "fetch"
    )
    assert "WEIGHTGUARD_AUDIT_LOG" in CliRunner().invoke(cmd, ["--help"]).output


def test_group_help_is_lazy() -> None:
    res = CliRunner().invoke(audit, ["--help"])
    assert res.exit_code == 0 and "verify" in res.output and "show" in res.output
