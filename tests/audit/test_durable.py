"""One durable audit point per load: the steps are written at once, the decision fsyncs.

A load writes ``load.start``, ``verify.ok``, ``key.unwrap`` and its decision
(``load.ok`` / ``load.denied`` / ``tamper.detected``).  Each is one ``write()`` as it
happens (a crashed process leaves them), and one fsync -- the decision's, before
``load_file`` returns -- makes them all durable.  It used to be one fsync per event.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.load import (
    MODEL_LAYOUT,
    encrypt,
    file_key,  # noqa: F401 - fixture
    flip,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard import loader
from weightguard.audit import AuditLog, verify_log
from weightguard.errors import IntegrityError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(tmp_path: Path, file_key: str, sign_keys) -> Path:
    plain = tmp_path / "plain.safetensors"
    write_st(plain, MODEL_LAYOUT)
    enc = tmp_path / "model.safetensors"
    encrypt(plain, enc, file_key)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys, chunk_size=4096)
    return enc


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, list[str]]]]:
    """Every fsync: (path of the descriptor, events in that file at the time)."""
    seen: list[tuple[str, list[str]]] = []
    real = os.fsync

    def counting(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        events: list[str] = []
        if path.endswith(".jsonl"):
            with open(path, "rb") as f:
                events = [json.loads(x)["event"] for x in f.read().splitlines()]
        seen.append((path, events))
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    yield seen


def _on(log: Path, seen: list[tuple[str, list[str]]]) -> list[list[str]]:
    return [events for path, events in seen if path == str(log)]


def test_a_load_fsyncs_the_audit_log_once_at_its_decision(
    model: Path, sign_keys, file_key: str, tmp_path: Path, fsyncs
) -> None:
    log = tmp_path / "audit.jsonl"
    audit = AuditLog(str(log))
    got = loader.load_file(
        model, policy=sign_keys.policy(), data_key=file_key, audit=audit, workers=2
    )
    assert got and len(got) == len(MODEL_LAYOUT)
    on_log = _on(log, fsyncs)
    steps = ["load.start", "verify.ok", "key.unwrap", "load.ok"]
    # one fsync (it was four), after the decision was written and before load_file
    # returned: the decision and every step before it are on disk together
    assert on_log == [steps], on_log
    audit.close()
    assert verify_log(log).ok


def test_a_denied_load_is_as_durable(
    model: Path, sign_keys, file_key: str, tmp_path: Path, fsyncs
) -> None:
    flip(model, model.stat().st_size - 20)  # a ciphertext byte of the last record
    log = tmp_path / "audit.jsonl"
    audit = AuditLog(str(log))
    with pytest.raises(IntegrityError):
        loader.load_file(
            model, policy=sign_keys.policy(), data_key=file_key, audit=audit, workers=2
        )
    on_log = _on(log, fsyncs)
    assert len(on_log) == 1 and on_log[0][:3] == ["load.start", "verify.ok", "key.unwrap"]
    assert on_log[0][-1] in ("tamper.detected", "load.denied")


def test_other_events_stay_durable_each(tmp_path: Path, fsyncs) -> None:
    log = tmp_path / "audit.jsonl"
    audit = AuditLog(str(log))
    audit.emit("fetch", object={"uri": "s3://b/m"})
    audit.emit("load.start", durable=True)  # the caller may ask
    audit.emit("encrypt")
    assert _on(log, fsyncs) == [
        ["fetch"],
        ["fetch", "load.start"],
        ["fetch", "load.start", "encrypt"],
    ]
    audit.emit("key.unwrap")
    audit.close()  # a step is made durable at close at the latest
    assert _on(log, fsyncs)[-1][-1] == "key.unwrap"


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from weightguard import loader
    from weightguard.audit import AuditLog
    from weightguard.policy import PublicKey

    def die(*a, **k):  # killed while decrypting: after key.unwrap, before the decision
        os.kill(os.getpid(), signal.SIGKILL)

    loader.run_pipeline = die
    audit = AuditLog(sys.argv[3])
    policy = PublicKey.from_file(sys.argv[2])
    loader.load_file(sys.argv[1], policy=policy, data_key=sys.argv[4], audit=audit)
    """
)


def test_a_crash_before_the_decision_leaves_a_load_without_one(
    model: Path, sign_keys, file_key: str, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    assert "run_pipeline" in vars(loader)  # what the child replaces
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(sign_keys.public), str(log), file_key],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    events = [json.loads(x)["event"] for x in log.read_bytes().splitlines()]
    assert events == ["load.start", "verify.ok", "key.unwrap"]  # the load did not complete
    res = verify_log(log)
    assert res.ok and res.crash is None, res.describe()
