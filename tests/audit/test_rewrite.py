"""Audit logs that cannot be rewritten (issue 12, item 5): one regression per attack.

Each attacker below can write the log file (or the stdout stream) and recompute the
hash chain, but holds no checkpoint signing key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.audit.test_chain import lines, put, write_log
from tests.audit.test_cli import run_cli
from tests.support.services import SeaweedS3Server
from weightguard._internal.audit.record import GENESIS, canonical, digest
from weightguard.audit import AuditLog, S3Anchor, generate_checkpoint_key, verify_log


@pytest.fixture
def ckey(tmp_path: Path) -> tuple[Path, Path]:
    priv = tmp_path / "ck.pem"
    generate_checkpoint_key(str(priv))
    return priv, Path(str(priv) + ".pub")


def rechain(records: list[dict[str, Any]], log_id: str | None = None) -> list[bytes]:
    """What the attacker writes: the records, renumbered and re-linked from genesis."""
    out, prev = [], GENESIS
    for seq, rec in enumerate(records):
        r = dict(rec, seq=seq, prev=prev, **({"log": log_id} if log_id else {}))
        prev = digest(r)
        out.append(canonical(r) + b"\n")
    return out


def events_only(path: Path) -> list[dict[str, Any]]:
    return [r for r in (json.loads(x) for x in lines(path)) if r["event"] != "checkpoint"]


def test_checkpoints_stripped_and_chain_recomputed_is_refused(
    tmp_path: Path, ckey: tuple[Path, Path]
) -> None:
    log = tmp_path / "a.jsonl"
    write_log(log, 9, key=ckey[0], every=4)
    assert verify_log(log, checkpoint_key=ckey[1]).ok
    put(log, rechain(events_only(log)[:-2]))  # two records dropped, no checkpoint left
    assert verify_log(log).ok  # self-consistent: the chain alone cannot tell
    res = verify_log(log, checkpoint_key=ckey[1])
    assert not res.ok and res.problem is not None and res.problem.kind == "unsigned"
    assert "7 record(s) (seq 0..6) are not covered by a verified signed checkpoint" in (
        res.problem.message
    )
    r = run_cli("audit", "verify", str(log), "--checkpoint-key", str(ckey[1]))
    assert r.returncode == 1 and r.stdout.startswith("BROKEN (unsigned)"), r.stdout + r.stderr
    assert "--max-unsigned-tail" in r.stdout


def test_edited_outer_fields_of_the_final_checkpoint_are_refused(
    tmp_path: Path, ckey: tuple[Path, Path]
) -> None:
    """No later record covers the last checkpoint line, so its own signature must pin
    every field of it: outcome, time, version, extra fields, the signature's encoding."""
    log = tmp_path / "a.jsonl"
    write_log(log, 3, key=ckey[0])
    original = lines(log)
    last = json.loads(original[-1])
    assert last["event"] == "checkpoint"
    assert verify_log(log, checkpoint_key=ckey[1]).ok
    edits: list[Callable[[dict[str, Any]], None]] = [
        lambda r: r.update(outcome="denied"),
        lambda r: r.update(time="2020-01-01T00:00:00.000000Z"),
        lambda r: r.update(v=2),
        lambda r: r.update(v=True),  # == 1 in Python: the line's bytes changed unnoticed
        lambda r: r.update(reason="all good"),
        lambda r: r["sig"].update(note="x"),
        lambda r: r["checkpoint"].update(note="x"),
        lambda r: r["sig"].update(value=r["sig"]["value"].replace("=", "") + "="),
    ]
    for edit in edits:
        rec = json.loads(original[-1])
        edit(rec)
        put(log, [*original[:-1], canonical(rec) + b"\n"])
        res = verify_log(log, checkpoint_key=ckey[1])
        assert not res.ok and res.problem is not None, rec
        assert res.problem.kind == "bad_checkpoint", res.describe()


def test_unsigned_log_fails_the_cli_unless_allowed(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    write_log(log, 3)
    r = run_cli("audit", "verify", str(log))
    assert r.returncode == 1
    assert r.stdout.startswith("UNSIGNED (chain intact, no checkpoint key given): log ")
    assert not r.stdout.startswith("OK")  # an unsigned chain is never reported as plain OK
    assert "checkpoints were not verified" in r.stderr and "--allow-unsigned" in r.stderr
    r = run_cli("audit", "verify", str(log), "--allow-unsigned")
    assert r.returncode == 0 and r.stdout.startswith("UNSIGNED (chain intact")
    r = run_cli("audit", "verify", str(log), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["accepted"] is False
    r = run_cli("audit", "verify", str(log), "--allow-unsigned", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["accepted"] is True and out["signed"] is False


def test_live_log_tail_is_accepted_only_up_to_the_stated_maximum(
    tmp_path: Path, ckey: tuple[Path, Path]
) -> None:
    log = tmp_path / "a.jsonl"
    w = AuditLog(str(log), signing_key=str(ckey[0]), checkpoint_every=4)
    for i in range(6):  # checkpoint at seq 4; seq 5 and 6 written after it, still open
        w.emit("load.ok", bytes=i)
    try:
        res = verify_log(log, checkpoint_key=ckey[1])
        assert res.problem is not None and res.problem.kind == "unsigned"
        assert verify_log(log, checkpoint_key=ckey[1], max_unsigned_tail=1).problem is not None
        res = verify_log(log, checkpoint_key=ckey[1], max_unsigned_tail=2)
        assert res.ok and res.logs[0].unsigned_tail == 2 and res.logs[0].signed_through == 5
        r = run_cli(
            "audit", "verify", str(log), "--checkpoint-key", str(ckey[1]),
            "--max-unsigned-tail", "2",
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        w.close()
    assert verify_log(log, checkpoint_key=ckey[1]).ok  # sealed at close


def test_log_ids_come_from_the_verifier(tmp_path: Path, ckey: tuple[Path, Path]) -> None:
    log = tmp_path / "a.jsonl"
    write_log(log, 3, key=ckey[0])
    log_id = json.loads(lines(log)[0])["log"]
    assert verify_log(log, checkpoint_key=ckey[1], log_ids=[log_id]).ok
    res = verify_log(log, checkpoint_key=ckey[1], log_ids=[str(uuid.uuid4())])
    assert res.problem is not None and res.problem.kind == "unknown_log"
    assert "--log-id" in res.problem.message
    res = verify_log(log, checkpoint_key=ckey[1], log_ids=[log_id, "other-pod-log"])
    assert res.problem is not None and res.problem.kind == "deleted"
    assert "other-pod-log" in res.problem.message


@pytest.fixture
def locked_bucket(s3: SeaweedS3Server, new_name: Callable[[str], str]) -> str:
    return s3.make_bucket(new_name("audit"), object_lock=True)


def test_log_rewritten_under_a_fresh_id_fails_with_key_and_anchor(
    tmp_path: Path, s3: SeaweedS3Server, locked_bucket: str, ckey: tuple[Path, Path]
) -> None:
    """Real SeaweedFS Object Lock anchor: the anchor is read for the logs it holds (or
    the --log-id given), not for whatever id the rewritten log claims."""
    client = s3.client()
    anchor_uri = f"s3://{locked_bucket}/anchors"
    log = tmp_path / "audit.jsonl"
    with AuditLog(
        str(log), signing_key=str(ckey[0]), anchor=anchor_uri, s3_client=client, retention_days=1
    ) as w:
        for i in range(5):
            w.emit("load.denied", outcome="denied", reason=f"unsigned shard {i}")
    anchor = S3Anchor(anchor_uri, client=client)
    real_id = json.loads(lines(log)[0])["log"]
    assert anchor.log_ids() == [real_id]
    assert verify_log(log, checkpoint_key=ckey[1], anchor=anchor).ok
    # the attacker drops the denials and rewrites the rest under a fresh log id
    kept = [r for r in events_only(log) if r["outcome"] == "ok"]
    fresh = str(uuid.uuid4())
    put(log, rechain([{"v": 1, "event": "load.ok", "outcome": "ok", "time": "x"}, *kept], fresh))
    res = verify_log(log, checkpoint_key=ckey[1], anchor=anchor)
    assert res.problem is not None and res.problem.kind == "unknown_log", res.describe()
    assert fresh in res.problem.message
    res = verify_log(log, checkpoint_key=ckey[1], anchor=anchor, log_ids=[real_id])
    assert res.problem is not None and res.problem.kind == "unknown_log"
    res = verify_log(log, checkpoint_key=ckey[1], anchor=anchor, log_ids=[fresh])
    assert res.problem is not None and res.problem.kind == "unanchored"
    r = run_cli(
        "audit", "verify", str(log), "--checkpoint-key", str(ckey[1]), "--anchor", anchor_uri,
        env=s3.env(),
    )  # fmt: skip
    assert r.returncode == 1 and r.stdout.startswith("BROKEN (unknown_log)"), r.stdout + r.stderr


def test_anchor_without_a_key_proves_nothing(
    tmp_path: Path, s3: SeaweedS3Server, locked_bucket: str, ckey: tuple[Path, Path]
) -> None:
    client = s3.client()
    anchor_uri = f"s3://{locked_bucket}/anchors"
    log = tmp_path / "audit.jsonl"
    with AuditLog(
        str(log), signing_key=str(ckey[0]), anchor=anchor_uri, s3_client=client, retention_days=1
    ) as w:
        w.emit("load.ok")
    res = verify_log(log, anchor=S3Anchor(anchor_uri, client=client))
    assert res.problem is not None and res.problem.kind == "unsigned"
    assert "no checkpoint key was given" in res.problem.message
