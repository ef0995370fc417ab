"""CLI: encrypt / decrypt / rewrap / inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from weightguard_cli.main import cli

from tests.support.format import build_safetensors
from weightguard import crypt


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", str(log))
    return log


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_cli_encrypt_inspect_rewrap_decrypt(tmp_path: Path, env: Path) -> None:
    key = crypt.create_key_file(tmp_path / "dev.key")
    key2 = crypt.create_key_file(tmp_path / "new.key")
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"layer.w": ("F32", [3000], os.urandom(12000))}, {"a": "b"}))
    r = CliRunner()
    args = ["encrypt", str(src), "-o", str(tmp_path / "m.enc"), "--data-key", f"file://{key}",
            "--chunk-size", "4KiB", "--context", "acme/m", "--json"]  # fmt: skip
    res = r.invoke(cli, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["num_chunks"] == 3 and out["key"]["context"] == "acme/m"
    assert "development key file" in res.stderr

    res = r.invoke(cli, ["inspect", str(tmp_path / "m.enc")])
    assert res.exit_code == 0 and "layer.w  F32  [3000]" in res.stdout
    assert "NOT authenticated" in res.stdout
    # the header's file:// key is used only when the caller names it
    res = r.invoke(cli, ["inspect", str(tmp_path / "m.enc"), "--verify", "--json"])
    assert res.exit_code == 1 and "the caller names it" in str(res.exception)
    res = r.invoke(cli, ["inspect", str(tmp_path / "m.enc"), "--verify", "--json",
                         "--allow-key", f"file://{key}"])  # fmt: skip
    assert json.loads(res.stdout)["authenticated"] is True

    before = (tmp_path / "m.enc").read_bytes()
    res = r.invoke(
        cli,
        [
            "rewrap",
            str(tmp_path / "m.enc"),
            "--new-data-key",
            f"file://{key2}",
            "--data-key",
            f"file://{key}",
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"file://{key} -> file://{key2}" in res.stdout
    after = (tmp_path / "m.enc").read_bytes()
    assert after[-12_100:] == before[-12_100:]

    res = r.invoke(cli, ["decrypt", str(tmp_path / "m.enc"), "-o", str(tmp_path / "m.dec"),
                         "--key", f"file://{key2}"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "writing decrypted plaintext weights" in res.stderr
    assert (tmp_path / "m.dec").read_bytes() == src.read_bytes()

    events = [e["event"] for e in _events(env)]
    assert events == ["encrypt", "verify.failed", "rewrap", "decrypt"]
    assert key.read_text().strip() not in env.read_text()


def test_cli_model_dir_and_encrypt_header(tmp_path: Path, env: Path) -> None:
    key = crypt.create_key_file(tmp_path / "dev.key")
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(build_safetensors({"secret.w": ("U8", [10], bytes(10))}))
    (d / "config.json").write_text("{}")
    r = CliRunner()
    res = r.invoke(cli, ["encrypt", str(d), "-o", str(tmp_path / "enc"), "--data-key",
                         f"file://{key}", "--encrypt-header", "--encrypt-other-files"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "encrypted 2 file(s)" in res.stdout
    res = r.invoke(cli, ["inspect", str(tmp_path / "enc")])
    assert "tensors:    hidden" in res.stdout and "secret" not in res.stdout
    assert "(raw)" in res.stdout  # config.json encrypted as raw content
    res = r.invoke(cli, ["decrypt", str(tmp_path / "enc"), "-o", str(tmp_path / "dec"),
                         "--allow-key", f"file://{key}"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dec" / "config.json").read_text() == "{}"


def test_cli_errors_are_one_line(tmp_path: Path, env: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 16)
    proc = subprocess.run(
        [sys.executable, "-m", "weightguard_cli", "inspect", str(bad)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "cli"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "not a weightguard artifact" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(cli, ["encrypt", str(bad), "-o", "y", "--data-key", "file://k",
                                   "--chunk-size", "lots"])  # fmt: skip
    assert res.exit_code == 2 and "not a size" in res.output


def test_decrypt_warns_of_plaintext_only_once_the_key_is_unwrapped(
    tmp_path: Path, env: Path
) -> None:
    """A refused key writes nothing, so it must not be told 'writing decrypted plaintext'."""
    key = crypt.create_key_file(tmp_path / "dev.key")
    other = crypt.create_key_file(tmp_path / "other.key")
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"w": ("F32", [64], os.urandom(256))}, None))
    crypt.encrypt_file(src, tmp_path / "m.enc", f"file://{key}")
    r = CliRunner()
    out = tmp_path / "m.dec"
    res = r.invoke(cli, ["decrypt", str(tmp_path / "m.enc"), "-o", str(out),
                         "--data-key", f"file://{other}"])  # fmt: skip
    assert res.exit_code == 1
    assert "writing decrypted plaintext" not in res.stderr
    assert not out.exists()
    res = r.invoke(cli, ["decrypt", str(tmp_path / "m.enc"), "-o", str(out),
                         "--data-key", f"file://{key}"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stderr.count("writing decrypted plaintext weights") == 1
    assert out.read_bytes() == src.read_bytes()
