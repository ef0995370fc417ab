"""A real secure load writes a log that verifies; an unwritable audit refuses the load."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    encrypt,
    file_key,  # noqa: F401 - fixture
    flip,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard import loader
from weightguard.audit import AuditLog, generate_checkpoint_key, verify_log
from weightguard.errors import AuditError, WeightguardError


@pytest.fixture
def released(tmp_path: Path, file_key: str, sign_keys) -> tuple[Path, dict, str]:
    src = tmp_path / "plain" / "model.safetensors"
    src.parent.mkdir()
    expected = write_st(src, MODEL_LAYOUT)
    enc = tmp_path / "release" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    return enc, expected, src.read_bytes()[-4096:].hex()


def test_real_load_produces_a_verified_log(
    tmp_path: Path, released, sign_keys, file_key: str
) -> None:
    enc, expected, plain_tail_hex = released
    ck = tmp_path / "audit-ck.pem"
    generate_checkpoint_key(str(ck))
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(str(log_path), signing_key=str(ck)) as audit:
        got = loader.load_file(enc, policy=sign_keys.policy(), audit=audit, data_key=file_key)
        assert_same(got, expected)
        flip(enc, enc.stat().st_size - 100)  # tamper with the last chunk
        with pytest.raises(WeightguardError):
            loader.load_file(enc, policy=sign_keys.policy(), audit=audit, data_key=file_key)
    res = verify_log(log_path, checkpoint_key=str(ck) + ".pub")
    assert res.ok, res.describe()
    recs = [json.loads(x) for x in log_path.read_bytes().splitlines()]
    names = [r["event"] for r in recs]
    assert names[:4] == ["load.start", "verify.ok", "key.unwrap", "load.ok"]
    assert names[-1] == "checkpoint"
    denied = [r for r in recs[4:] if r["outcome"] == "denied"]
    assert denied and denied[-1]["event"] in ("tamper.detected", "load.denied")
    ok = recs[3]
    assert ok["object"]["uri"].endswith("model.safetensors") and ok["object"]["signer"]
    assert recs[2]["object"]["key_id"] == file_key
    # no key or plaintext material in the log
    data = log_path.read_bytes()
    kek_hex = Path(file_key.removeprefix("file://")).read_text().strip()
    assert kek_hex.encode() not in data and plain_tail_hex[:64].encode() not in data


def test_unwritable_audit_refuses_the_load(tmp_path: Path, released, sign_keys) -> None:
    enc, _, _ = released
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    audit = AuditLog(str(blocker / "audit.jsonl"))
    with pytest.raises(AuditError, match="cannot write audit log") as ei:
        loader.load_file(enc, policy=sign_keys.policy(), audit=audit)
    assert "access is refused" in str(ei.value)
