"""Access logs whose checkpoints are signed by a Vault/OpenBao Transit key and anchored
in Vault KV (a real OpenBao server), verified by the report as `audit verify` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.report.conftest import Release
from tests.support.services import OpenBaoServer
from weightguard.audit import AuditLog
from weightguard.report import build_report


def test_vault_signed_and_anchored_log(
    release: Release,
    vault_env: OpenBaoServer,
    new_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    client = vault_env.client()
    if "wgreport/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="wgreport", options={"version": "2"})
    key = new_name("audit")
    client.secrets.transit.create_key(name=key, key_type="ed25519", mount_point="transit")
    key_uri, anchor = f"vault://transit/{key}", f"vault-kv://wgreport/{new_name('anchors')}"
    log = tmp_path / "audit.jsonl"
    sub = {"k8s_namespace": "serving", "k8s_service_account": "inference"}
    with AuditLog(str(log), signing_key=key_uri, anchor=anchor, checkpoint_every=5) as a:
        for i in range(7):
            a.emit("load.ok", object={"uri": f"s3://m/{i}"}, subject=sub)
    ev = build_report(
        release.path,
        release.keys.policy(),
        access_logs=[log],
        checkpoint_vault_key=key_uri,
        anchor=anchor,
    )
    (lv,) = ev.access.logs
    assert lv.verdict == "OK", lv.text
    assert lv.summaries[0]["checkpoints_verified"] == 2
    assert lv.summaries[0]["anchored_size"] == 8
    assert dict(ev.access.stats.loads_by_identity) == {"serving/inference": 7}
    cmd = f"weightguard audit verify {log} --checkpoint-vault-key {key_uri} --anchor {anchor}"
    assert ("access: the log's chain and signed checkpoints", cmd) in ev.commands
