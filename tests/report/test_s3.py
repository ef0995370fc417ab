"""A release and its access log on S3 (a real SeaweedFS server): verified exactly as a
local release, every byte hashed, the temporary copy removed afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.report.conftest import Release
from tests.support.services import SeaweedS3Server
from weightguard.audit import AuditLog
from weightguard.bom import build_bom
from weightguard.report import build_report


def _upload(s3: SeaweedS3Server, bucket: str, root: Path, prefix: str) -> None:
    client = s3.client()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(root).as_posix()}")


def test_s3_release(release: Release, s3_env: SeaweedS3Server, bucket: str) -> None:
    _upload(s3_env, bucket, release.path, "models/tiny")
    before = set(Path(tempfile.gettempdir()).glob("wg-report-*"))
    uri = f"s3://{bucket}/models/tiny/"
    ev = build_report(
        uri,
        release.keys.policy(),
        access_logs=[release.log],
        checkpoint_key=release.checkpoint_pub,
    )
    assert ev.provenance.verdict == "PASS", ev.provenance.summary
    assert ev.provenance.signature == f"s3://{bucket}/models/tiny/model.sig"
    assert {f.name for f in ev.provenance.files} == {
        "README.md",
        "config.json",
        "model.safetensors",
    }
    assert [a.name for a in ev.protection.encrypted] == ["model.safetensors"]
    assert ev.commands[0] == ("copy the release", f"aws s3 cp --recursive {uri} release/")
    assert set(Path(tempfile.gettempdir()).glob("wg-report-*")) == before  # nothing left
    assert '"specVersion": "1.6"' in build_bom(uri, release.keys.policy())
    # an edited object on S3 fails provenance
    client = s3_env.client()
    body = bytearray(client.get_object(Bucket=bucket, Key="models/tiny/config.json")["Body"].read())
    body[-2] ^= 1
    client.put_object(Bucket=bucket, Key="models/tiny/config.json", Body=bytes(body))
    ev = build_report(uri, release.keys.policy())
    assert ev.provenance.verdict == "FAIL"
    assert "content differs from the signed" in ev.provenance.summary


def test_s3_access_log_anchored_in_its_prefix(
    release: Release, s3_env: SeaweedS3Server, new_name: Callable[[str], str]
) -> None:
    """An S3 log (Object Lock segments) is verified against the checkpoints anchored in
    its own prefix, as `weightguard audit verify` does, then counted."""
    locked = s3_env.make_bucket(new_name("audit"), object_lock=True)
    uri = f"s3://{locked}/pods"
    key = str(release.checkpoint_pub)[: -len(".pub")]
    log = AuditLog(uri, s3_client=s3_env.client(), signing_key=key, checkpoint_every=4,
                   retention_days=1)  # fmt: skip
    sub = {"k8s_namespace": "serving", "k8s_service_account": "inference"}
    for i in range(5):
        log.emit("load.ok", object={"uri": f"s3://models/m{i}"}, subject=sub)
    log.emit("load.denied", outcome="denied", reason="no", object={"uri": "m"}, subject=sub)
    log.close()
    ev = build_report(release.path, release.keys.policy(), access_logs=[uri],
                      checkpoint_key=release.checkpoint_pub)  # fmt: skip
    (lv,) = ev.access.logs
    assert lv.verdict == "OK" and lv.summaries[0]["anchored_size"] is not None, lv.text
    st = ev.access.stats
    assert dict(st.loads_by_identity) == {"serving/inference": 5} and st.denied_total == 1
    cmd = f"weightguard audit verify {uri} --checkpoint-key {release.checkpoint_pub}"
    assert ("access: the log's chain and signed checkpoints", cmd) in ev.commands
