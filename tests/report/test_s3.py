"""A release and its access log on S3 (a real SeaweedFS server): verified exactly as a
local release, every byte hashed, the temporary copy removed afterwards."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.report.conftest import Release
from tests.support.services import SeaweedS3Server
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
