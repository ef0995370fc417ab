"""Fail-closed: when the audit cannot be written, emit raises AuditError."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from weightguard.audit import AuditLog, FileSink, StreamSink, default_log_spec, verify_log
from weightguard.errors import AuditError, ConfigError

DEV_FULL = "/dev/full"
needs_dev_full = pytest.mark.skipif(not os.path.exists(DEV_FULL), reason="no /dev/full")


@needs_dev_full
def test_sink_becomes_unwritable_mid_run(tmp_path: Path) -> None:
    """The log file is replaced by a full device (disk full): the next event is refused."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.emit("load.start", object={"uri": "s3://m/x"})
    os.rename(path, tmp_path / "kept.jsonl")
    os.symlink(DEV_FULL, path)
    with pytest.raises(AuditError) as ei:
        log.emit("load.ok", object={"uri": "s3://m/x"})
    msg = str(ei.value)
    assert "cannot write audit log" in msg and str(path) in msg
    assert "access is refused" in msg
    assert verify_log(tmp_path / "kept.jsonl").records == 1


def test_unopenable_destination(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = AuditLog(str(blocker / "audit.jsonl"))  # parent is a file: ENOTDIR
    with pytest.raises(AuditError, match=r"cannot write audit log .*audit\.jsonl"):
        log.emit("load.start")


def test_fail_open_warns_once_and_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = AuditLog(str(blocker / "audit.jsonl"), fail_closed=False)
    with caplog.at_level("WARNING", logger="weightguard.audit"):
        log.emit("load.start")
        log.emit("load.ok")
    # the library warns through logging (weightguard.audit); the CLI prints it on stderr
    lost = [r for r in caplog.records if "audit event lost (fail-open)" in r.getMessage()]
    assert len(lost) == 1 and lost[0].name == "weightguard.audit"


def test_fan_out_writes_everywhere_and_fails_if_one_sink_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    stream = io.StringIO()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = AuditLog([FileSink(good), StreamSink(stream, name="buf"), str(blocker / "bad.jsonl")])
    with pytest.raises(AuditError, match=r"bad\.jsonl"):
        log.emit("load.ok", object={"uri": "u"})
    # the healthy sinks still got the event
    assert json.loads(good.read_text())["event"] == "load.ok"
    assert json.loads(stream.getvalue())["event"] == "load.ok"


def test_closed_stdout_stream_fails_closed() -> None:
    s = io.StringIO()
    log = AuditLog([StreamSink(s, name="stdout")])
    log.emit("load.start")
    s.close()
    with pytest.raises(AuditError, match="cannot write audit log stdout"):
        log.emit("load.ok")


def test_from_env_and_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "env.jsonl"
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", str(p))
    with AuditLog.from_env() as log:
        log.emit("encrypt", object={"uri": "file:///m"})
    assert json.loads(p.read_text())["event"] == "encrypt"
    q = tmp_path / "opt.jsonl"
    with AuditLog.open(str(q)) as log:  # --audit-log wins over the env
        log.emit("sign")
    assert json.loads(q.read_text())["event"] == "sign"
    with AuditLog.open(None) as log:  # None falls back to the env
        log.emit("verify.ok")
    assert len(p.read_text().splitlines()) == 2
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", "-")
    log = AuditLog.from_env()
    assert isinstance(log.sinks[0], StreamSink)
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", "ftp://x/y")
    with pytest.raises(ConfigError, match="unsupported audit log destination"):
        AuditLog.from_env()
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", str(p))
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_CHECKPOINT_EVERY", "lots")
    with pytest.raises(ConfigError, match="WEIGHTGUARD_AUDIT_CHECKPOINT_EVERY"):
        AuditLog.from_env()


def test_default_destination_is_never_a_no_op() -> None:
    assert default_log_spec({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "-"
    assert (
        default_log_spec({"XDG_STATE_HOME": "/var/lib/x"}) == "/var/lib/x/weightguard/audit.jsonl"
    )
    assert default_log_spec({}).endswith(
        os.path.join(".local", "state", "weightguard", "audit.jsonl")
    )


def test_repr_hides_secrets(tmp_path: Path) -> None:
    from weightguard.audit import Ed25519FileSigner, generate_checkpoint_key

    key = tmp_path / "k.pem"
    kid = generate_checkpoint_key(str(key))
    signer = Ed25519FileSigner(key)
    assert repr(signer) == f"Ed25519FileSigner(key_id={kid!r})"
    assert "PRIVATE" not in repr(AuditLog(str(tmp_path / "a"), signing_key=signer))
    assert oct(key.stat().st_mode & 0o777) == "0o600"
