"""Audit against real services: SeaweedFS S3 (Object Lock) and OpenBao (Transit, KV v2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.services import OpenBaoServer, SeaweedS3Server
from weightguard.audit import AuditLog, S3Anchor, VaultKVAnchor, generate_checkpoint_key, verify_log
from weightguard.errors import AuditError


@pytest.fixture
def locked_bucket(s3: SeaweedS3Server, new_name: Callable[[str], str]) -> str:
    return s3.make_bucket(new_name("audit"), object_lock=True)


@pytest.fixture
def ckey(tmp_path: Path) -> tuple[str, str]:
    priv = str(tmp_path / "ck.pem")
    generate_checkpoint_key(priv)
    return priv, priv + ".pub"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_s3_sink_segments_are_retained_and_verify(
    s3: SeaweedS3Server, locked_bucket: str, ckey: tuple[str, str]
) -> None:
    client = s3.client()
    uri = f"s3://{locked_bucket}/pods"
    log = AuditLog(uri, s3_client=client, signing_key=ckey[0], checkpoint_every=4, retention_days=1)
    for i in range(6):
        log.emit("load.ok", object={"uri": f"s3://models/m{i}"}, bytes=i)
    log.close()
    objs = client.list_objects_v2(Bucket=locked_bucket, Prefix="pods/")["Contents"]
    keys = sorted(o["Key"] for o in objs)
    segs = [k for k in keys if "/segments/" in k]
    cps = [k for k in keys if "/checkpoints/" in k]
    assert len(segs) >= 6 and len(cps) == 2  # checkpoint at seq 4, final at close
    # the segment is under Object Lock retention: deleting that version is refused
    head = client.head_object(Bucket=locked_bucket, Key=segs[0])
    assert head["ObjectLockMode"] == "GOVERNANCE"
    with pytest.raises(ClientError) as ei:
        client.delete_object(Bucket=locked_bucket, Key=segs[0], VersionId=head["VersionId"])
    assert ei.value.response["Error"]["Code"] == "AccessDenied"
    cp_head = client.head_object(Bucket=locked_bucket, Key=cps[0])
    with pytest.raises(ClientError):
        client.delete_object(Bucket=locked_bucket, Key=cps[0], VersionId=cp_head["VersionId"])
    # the whole log verifies, anchored in its own prefix
    res = verify_log(uri, checkpoint_key=ckey[1], anchor=uri, s3_client=client)
    assert res.ok, res.describe()
    assert res.records == 8 and res.logs[0].anchored_size == 7


def test_s3_anchor_detects_cut_tail_of_a_file_log(
    tmp_path: Path, s3: SeaweedS3Server, locked_bucket: str, ckey: tuple[str, str]
) -> None:
    client = s3.client()
    anchor_uri = f"s3://{locked_bucket}/anchors"
    path = tmp_path / "audit.jsonl"
    with AuditLog(
        str(path), signing_key=ckey[0], anchor=anchor_uri, s3_client=client, retention_days=1
    ) as log:
        for i in range(10):
            log.emit(
                "key.unwrap", object={"key_id": "vault://transit/m", "key_version": 2}, bytes=i
            )
    anchor = S3Anchor(anchor_uri, client=client)
    res = verify_log(path, checkpoint_key=ckey[1], anchor=anchor)
    assert res.ok, res.describe()
    assert res.logs[0].anchored_size == 10  # final checkpoint covers the 10 events
    # cut the tail at a record boundary: only the anchor can tell
    ls = _lines(path)
    path.write_bytes(b"".join(ls[:-4]))
    # without the anchor: refused by default (no signature covers the 7 records left),
    # undetectable only for an auditor who accepts that many unsigned records
    res = verify_log(path, checkpoint_key=ckey[1])
    assert res.problem is not None and res.problem.kind == "unsigned"
    assert verify_log(path, checkpoint_key=ckey[1], max_unsigned_tail=7).ok
    res = verify_log(path, checkpoint_key=ckey[1], anchor=anchor)
    assert not res.ok and res.problem is not None
    assert res.problem.kind == "truncated"
    assert "says the log had 10 records" in res.problem.message
    assert "only 7 are present" in res.problem.message and "tail was cut off" in res.problem.message
    # the attacker cannot remove the anchored checkpoint either
    key = client.list_objects_v2(Bucket=locked_bucket, Prefix="anchors/")["Contents"][-1]["Key"]
    ver = client.head_object(Bucket=locked_bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError):
        client.delete_object(Bucket=locked_bucket, Key=key, VersionId=ver)


def test_s3_sink_fails_closed_without_object_lock(s3: SeaweedS3Server, bucket: str) -> None:
    """A bucket without Object Lock cannot hold retained segments: refuse, do not degrade."""
    log = AuditLog(f"s3://{bucket}/x", s3_client=s3.client(), retention_days=1)
    with pytest.raises(AuditError, match="Object Lock"):
        log.emit("load.start")


def test_s3_sink_fails_closed_with_bad_credentials(s3: SeaweedS3Server, locked_bucket: str) -> None:
    client = s3.client(secret_key="wrong-secret-key-xxxxxxxxxxxx", retries=1)
    log = AuditLog(f"s3://{locked_bucket}/x", s3_client=client)
    with pytest.raises(AuditError, match="cannot write audit segment") as e:
        log.emit("load.start")
    # the cause in words from the one S3 table, not only "(ClientError)"
    assert "(SignatureDoesNotMatch)" in str(e.value) or "(InvalidAccessKeyId)" in str(e.value)
    assert "ClientError" not in str(e.value)


def _ed25519_transit_key(bao: OpenBaoServer, name: str) -> str:
    bao.client().secrets.transit.create_key(name=name, key_type="ed25519", mount_point="transit")
    return f"vault://transit/{name}"


def _kv(bao: OpenBaoServer) -> Any:
    client = bao.client()
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if "wgaudit/" not in mounts:
        client.sys.enable_secrets_engine("kv", path="wgaudit", options={"version": "2"})
    return client


def test_vault_transit_checkpoints_and_kv_anchor(
    tmp_path: Path, openbao: OpenBaoServer, new_name: Callable[[str], str]
) -> None:
    client = _kv(openbao)
    key_uri = _ed25519_transit_key(openbao, new_name("audit"))
    anchor_uri = f"vault-kv://wgaudit/{new_name('anchors')}"
    path = tmp_path / "audit.jsonl"
    with AuditLog(
        str(path), signing_key=key_uri, anchor=anchor_uri, vault_client=client, checkpoint_every=5
    ) as log:
        log.set_subject(
            vault_role="llm-loader", vault_entity_id="0f8a1b2c-3d4e-5f60-7182-93a4b5c6d7e8"
        )
        for i in range(7):
            log.emit("load.ok", object={"uri": f"s3://m/{i}"}, vault_request_id="req-1")
    recs = [json.loads(x) for x in _lines(path)]
    cps = [r for r in recs if r["event"] == "checkpoint"]
    assert len(cps) == 2 and cps[0]["sig"]["key_id"] == f"{key_uri}:v1"
    assert recs[0]["subject"]["vault_role"] == "llm-loader"
    anchor = VaultKVAnchor(anchor_uri, client=client)
    res = verify_log(path, checkpoint_vault_key=key_uri, anchor=anchor, vault_client=client)
    assert res.ok, res.describe()
    assert res.logs[0].checkpoints_verified == 2 and res.logs[0].anchored_size == len(recs) - 1
    # KV v2 keeps versions; the anchor never goes backwards (check-and-set)
    latest = anchor.latest(recs[0]["log"])
    assert latest is not None and latest["checkpoint"]["size"] == len(recs) - 1
    anchor.publish({"checkpoint": cps[0]["checkpoint"], "sig": cps[0]["sig"]})
    latest = anchor.latest(recs[0]["log"])
    assert latest is not None and latest["checkpoint"]["size"] == len(recs) - 1
    # truncation against the Vault anchor
    path.write_bytes(b"".join(_lines(path)[:-2]))  # ends with an event record now
    res = verify_log(path, checkpoint_vault_key=key_uri, anchor=anchor, vault_client=client)
    assert res.problem is not None and res.problem.kind == "truncated"
    # a checkpoint forged with a local key does not pass as the Vault key's
    forged_key = tmp_path / "evil.pem"
    generate_checkpoint_key(str(forged_key))
    with AuditLog(str(path), signing_key=str(forged_key)) as evil:
        evil.checkpoint()
    res = verify_log(path, checkpoint_vault_key=key_uri, vault_client=client)
    assert res.problem is not None and res.problem.kind == "bad_checkpoint"
    assert "unknown key" in res.problem.message


def test_vault_signer_unreachable_fails_closed(tmp_path: Path, openbao: OpenBaoServer) -> None:
    client = openbao.client(token="not-a-valid-token")
    log = AuditLog(
        str(tmp_path / "a.jsonl"),
        signing_key="vault://transit/nokey",
        vault_client=client,
        checkpoint_every=2,
    )
    log.emit("load.start")
    with pytest.raises(
        AuditError, match="Vault Transit sign for vault://transit/nokey failed"
    ) as e:
        log.emit("load.ok")
    # the cause in words, as foundation.vault tells it apart, not only a class name
    assert f"Vault at {openbao.addr} rejected the token while signing an audit checkpoint" in str(
        e.value
    )
    assert "not-a-valid-token" not in str(e.value)
