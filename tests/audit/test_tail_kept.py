"""An AuditLog opened on a file this process last wrote continues the chain from where
its write left it (_internal/audit/sinks._TAILS) without reading the tail again; a
file changed since (another writer, another size, a replaced file) is read again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from weightguard._internal.audit import sinks
from weightguard.audit import AuditLog, verify_log


def _events(log: Path, n: int) -> None:
    a = AuditLog(str(log), sync="none")
    for i in range(n):
        a.emit("load.ok", bytes=i)
    a.close()


def _seqs(log: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in log.read_text().splitlines()]


def test_a_new_log_on_the_same_file_continues_without_reading_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "a.jsonl"
    _events(log, 2)

    def no_read(*a: object, **k: object) -> None:
        raise AssertionError("the tail was read again")

    monkeypatch.setattr(sinks, "parse_record", no_read)
    _events(log, 2)  # kept: parse_record is not needed
    assert _seqs(log) == [0, 1, 2, 3]
    assert verify_log(log).ok


def test_a_file_another_writer_changed_is_read_again(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    _events(log, 1)
    code = (
        "import sys; from weightguard.audit import AuditLog; "
        "a = AuditLog(sys.argv[1], sync='none'); a.emit('fetch', bytes=7); a.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(log)], check=True, timeout=60)
    _events(log, 1)  # the other process's record is the tail now
    assert _seqs(log) == [0, 1, 2]
    res = verify_log(log)
    assert res.ok and res.records == 3, res.describe()


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    _events(log, 2)
    other = tmp_path / "b.jsonl"
    _events(other, 3)
    other.replace(log)  # another file (another inode) under the same name
    _events(log, 1)
    assert _seqs(log) == [0, 1, 2, 3]
    assert verify_log(log).ok
