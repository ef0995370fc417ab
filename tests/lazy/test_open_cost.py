"""The fixed cost of ``safe_open`` + one ``get_tensor`` + close, without weakening it:
the open's decision is on disk before any tensor is returned, one record read starts no
thread, and an audit log that cannot be made durable refuses the read."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from tests.support.lazy import release_file, tensors
from tests.support.load import (
    file_key,  # noqa: F401 - fixture
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import safe_open
from weightguard.audit import AuditLog
from weightguard.errors import AuditError


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.fixture
def art(tmp_path: Path, file_key: str, sign_keys) -> Path:
    return release_file(tmp_path / "rel", "m.safetensors", tensors(), key=file_key, keys=sign_keys)[
        0
    ]


def _events(path: Path) -> list[str]:
    import json

    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_the_decision_is_durable_before_a_tensor_is_returned(
    art: Path, sign_keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    synced: list[list[str]] = []  # the log's events at each fsync of it
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(log.resolve()):
            synced.append(_events(log))

    monkeypatch.setattr(os, "fsync", fsync)
    audit = AuditLog(str(log))
    with safe_open(art, policy=sign_keys.policy(), audit=audit) as f:
        t = f.get_tensor("scalar")
        # returned only after an fsync that covered the whole open (the grant)
        assert synced and synced[0] == ["load.start", "verify.ok", "key.unwrap"]
        assert torch.equal(t, tensors()["scalar"])
    audit.close()
    assert synced[-1][-1] == "load.ok"
    assert len(synced) == 2  # the open's (overlapped with the read) and load.ok's


def test_an_audit_log_that_cannot_sync_refuses_the_read(
    art: Path, sign_keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditLog(str(tmp_path / "audit.jsonl"))

    def broken() -> None:
        raise AuditError("cannot write audit log: disk full")

    monkeypatch.setattr(audit, "flush", broken)
    f = safe_open(art, policy=sign_keys.policy(), audit=audit)
    try:
        with pytest.raises(AuditError, match="disk full"):
            f.get_tensor("scalar")
    finally:
        f.close()
    assert _events(tmp_path / "audit.jsonl")[-2:] == ["load.denied", "load.ok"]


def test_one_record_starts_no_thread(art: Path, sign_keys) -> None:
    before = {t.name for t in threading.enumerate()}
    with safe_open(art, policy=sign_keys.policy(), audit=AuditLog("-")) as f:
        f.get_tensor("scalar")  # 8 bytes: one record
        started = {t.name for t in threading.enumerate()} - before
        assert not any(n.startswith("wg-lazy") for n in started), started
        assert f._reader._workers is None  # the cores were not even counted


def test_the_docs_figures_are_the_cited_runs() -> None:
    """docs/lazy.md's measured tables are generated from the result file they cite."""
    import json
    import re

    from benchmarks.lazy import ROOT, doc_tables

    doc = (ROOT / "docs" / "lazy.md").read_text()
    m = re.search(
        r"<!-- generated: python -m benchmarks\.lazy --doc ([^>]+?) -->\n"
        r"(.*?)<!-- end generated -->",
        doc,
        re.S,
    )
    assert m, "docs/lazy.md has no generated block"
    runs = [json.loads((ROOT / f).read_text()) | {"file": f} for f in m.group(1).split()]
    assert m.group(2).strip() == doc_tables(runs).strip()
