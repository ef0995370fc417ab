"""`--json`: one rule for every command, on success and on failure.

* A JSON document is one line on stdout (one helper, ``_output.echo_json``), so a
  consumer reads one document per line whatever the command.
* A failed command given ``--json`` prints, besides its ``error: ...`` line on stderr,
  one JSON object on stdout: ``{"error": ..., "type": ...}`` (``"hint"`` when the error
  has one), from one place: the root group's error handler.

The real ``python -m weightguard_cli`` process: its stdout, stderr and exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _wg(cwd: Path, *args: str) -> tuple[int, list[str], str]:
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(cwd / "audit.jsonl")}
    p = subprocess.run(
        [sys.executable, "-m", "weightguard_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return p.returncode, p.stdout.splitlines(), p.stderr


def test_failures_with_json_print_one_error_object_on_stdout(tmp_path: Path) -> None:
    (tmp_path / "bad.enc").write_bytes(b"\x00" * 100)
    cases = [
        # a WeightguardError: its message, its class and its hint
        (
            ("inspect", "bad.enc", "--json"),
            1,
            {
                "error": "bad.enc is not a weightguard artifact (bad magic bytes)",
                "type": "FormatError",
                "hint": "the file is corrupt or not of the expected kind",
            },
        ),
        (
            ("audit", "verify", "missing.jsonl", "--json"),
            1,
            {
                "error": "audit log missing.jsonl does not exist",
                "type": "ConfigError",
                "hint": "check the path",
            },
        ),
        # a usage error (exit 2)
        (
            ("inspect", "missing.enc", "--json"),
            2,
            {
                "error": "Invalid value for 'PATH': Path 'missing.enc' does not exist.",
                "type": "UsageError",
            },
        ),
    ]
    for args, rc, doc in cases:
        got_rc, out, err = _wg(tmp_path, *args)
        assert got_rc == rc, (args, out, err)
        assert len(out) == 1, (args, out)
        assert json.loads(out[0]) == doc, args
        assert doc["error"] in err  # the stderr line stays as it was


def test_failures_without_json_print_nothing_on_stdout(tmp_path: Path) -> None:
    (tmp_path / "bad.enc").write_bytes(b"\x00" * 100)
    rc, out, err = _wg(tmp_path, "inspect", "bad.enc")
    assert rc == 1 and out == []
    assert err.startswith("error: bad.enc is not a weightguard artifact (bad magic bytes)")
    # "--json" after "--" is an argument, not the option
    rc, out, _ = _wg(tmp_path, "inspect", "--", "--json")
    assert rc == 2 and out == []


@pytest.mark.parametrize("command", ["keys create", "audit keygen"])
def test_json_documents_are_one_line(tmp_path: Path, command: str) -> None:
    # `keys create --json` was pretty-printed over several lines, `audit keygen` one line
    if command == "keys create":
        args: tuple[str, ...] = ("keys", "create", "--data-key", "dev.key", "--json")
    else:
        args = ("audit", "keygen", "ck.pem", "--json")
    rc, out, err = _wg(tmp_path, *args)
    assert rc == 0, err
    assert len(out) == 1, out
    doc = json.loads(out[0])
    assert isinstance(doc, dict) and doc
