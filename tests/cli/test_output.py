"""Progress display and library logging, through the real `weightguard` process.

Progress must appear only on a terminal (a real pty here) and never with --quiet;
stdout, --json included, is the same either way.  Library messages go through the
`weightguard.*` loggers, which the CLI routes to stderr.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.format import build_safetensors
from weightguard import crypt

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, *, tty: bool) -> tuple[int, str, str]:
    """Run the CLI; with ``tty`` its stderr is a pseudo-terminal (stdout stays a pipe)."""
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(cwd / "audit.jsonl"), "TERM": "xterm"}
    cmd = [sys.executable, "-m", "weightguard_cli", *args]
    if not tty:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        out, _ = proc.communicate(timeout=120)
        reader.join(timeout=10)
    finally:
        os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    crypt.create_key_file(tmp_path / "dev.key")
    (tmp_path / "m.safetensors").write_bytes(
        build_safetensors({"w": ("F32", [1 << 18], os.urandom(1 << 20))}, {})
    )
    return tmp_path


def _encrypt(out: str, *extra: str) -> list[str]:
    return ["encrypt", "m.safetensors", "-o", out, "--data-key", "file://dev.key", *extra]


def test_progress_only_on_a_terminal(setup: Path) -> None:
    rc, out, err = _run(_encrypt("a.enc"), setup, tty=True)
    assert rc == 0
    assert "encrypting m.safetensors" in err and "━" in err  # rich's bar
    assert out.startswith("encrypted m.safetensors -> a.enc: ")
    rc, out, err = _run(_encrypt("b.enc"), setup, tty=False)
    assert rc == 0
    assert "encrypting" not in err and "━" not in err
    assert out.startswith("encrypted m.safetensors -> b.enc: ")


def test_quiet_turns_progress_off(setup: Path) -> None:
    rc, out, err = _run(_encrypt("a.enc", "--quiet"), setup, tty=True)
    assert rc == 0
    assert "encrypting" not in err and "━" not in err
    assert out.startswith("encrypted m.safetensors -> a.enc: ")


def test_json_is_unchanged_by_progress(setup: Path) -> None:
    rc, tty_out, err = _run(_encrypt("a.enc", "--json"), setup, tty=True)
    assert rc == 0 and "encrypting" in err
    rc, pipe_out, _ = _run(_encrypt("b.enc", "--json"), setup, tty=False)
    assert rc == 0
    a, b = json.loads(tty_out), json.loads(pipe_out)
    assert a.keys() == b.keys() and a["num_chunks"] == b["num_chunks"]


def test_library_warning_goes_through_logging(
    setup: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="weightguard"):
        crypt.encrypt_file(setup / "m.safetensors", setup / "c.enc", f"file://{setup}/dev.key")
    rec = [r for r in caplog.records if r.name == "weightguard.crypt"]
    assert rec and rec[0].getMessage().startswith("using development key file ")
    # ... and the CLI writes that record to stderr, prefixed
    rc, _, err = _run(_encrypt("d.enc"), setup, tty=False)
    assert rc == 0
    assert err.splitlines()[0] == (
        "weightguard: warning: using development key file dev.key; not for production "
        "(use vault:// or awskms://)"
    )


def test_library_never_prints() -> None:
    """No print() or sys.stdout/sys.stderr writes in the library (the dev-service runner,
    moving to tests/support, is the one command-line tool inside it)."""
    offenders = []
    for path in sorted((ROOT / "weightguard").rglob("*.py")):
        if path.name == "services.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Name) and f.id == "print":
                offenders.append(f"{path.name}:{node.lineno} print")
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "write"
                and isinstance(f.value, ast.Attribute)
                and f.value.attr in ("stderr", "stdout")
            ):
                offenders.append(f"{path.name}:{node.lineno} sys.{f.value.attr}.write")
    assert offenders == []
