"""Nothing unverified steers a signed load: index rewrites, listing edits, unsafe names.

Issue 12 items 1 and 6.  The attacker can write to the bucket (or directory) but not
sign: every rewrite below keeps the file's byte length so size checks alone pass.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from tests.support.load import (
    MODEL_LAYOUT,
    events,
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard import loader
from weightguard._internal.foundation.names import safe_relative_name
from weightguard._internal.load.sources import S3Options
from weightguard.errors import CoverageError, FormatError, IntegrityError

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model.safetensors.index.json"


def _model(d: Path, sign_keys) -> dict[str, str]:  # type: ignore[no-untyped-def]
    d.mkdir()
    wm: dict[str, str] = {}
    for i, shard in enumerate(SHARDS, 1):
        layout = [(f"s{i}.{n}", dt, shape) for n, dt, shape in MODEL_LAYOUT]
        write_st(d / shard, layout, seed=i)
        wm |= {name: shard for name, _, _ in layout}
    (d / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": wm}, sort_keys=True))
    (d / "config.json").write_text('{"arch": "test"}')
    sign(d, d / "model.sig", sign_keys, chunk_size=4096)
    return wm


def _drop_shard_same_length(index: Path) -> None:
    """Point every tensor of shard 2 at shard 1: same byte length, shard 2 unnamed."""
    raw = index.read_bytes()
    evil = raw.replace(SHARDS[1].encode(), SHARDS[0].encode())
    assert len(evil) == len(raw) and evil != raw
    index.write_bytes(evil)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from weightguard_cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return int(exc.value.code or 0), cap.out + cap.err


def _assert_refused(sink) -> None:  # type: ignore[no-untyped-def]
    names = events(sink)
    assert "load.ok" not in names
    denied = last(sink, "load.denied") if "load.denied" in names else last(sink, "tamper.detected")
    assert denied["outcome"] == "denied"


def test_index_rewrite_same_length_local(tmp_path: Path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    _model(d, sign_keys)
    ok = loader.load_file(d, policy=sign_keys.policy(), audit=memory_audit()[0])
    assert {k.split(".")[0] for k in ok} == {"s1", "s2"}
    _drop_shard_same_length(d / INDEX)
    audit, sink = memory_audit()
    with pytest.raises(
        IntegrityError, match=r"model.safetensors.index.json differs from the signed"
    ):
        loader.load_file(d, policy=sign_keys.policy(), audit=audit)
    _assert_refused(sink)
    assert last(sink, "tamper.detected")["object"]["file"] == f"{d}/{INDEX}"


def test_index_rewrite_same_length_cli_check(tmp_path: Path, sign_keys, capsys) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    _model(d, sign_keys)
    _drop_shard_same_length(d / INDEX)
    log = tmp_path / "audit.jsonl"
    argv = ["load", str(d), "--check", "--key", str(sign_keys.public), "--audit-log", str(log)]
    rc, out = _cli(argv, capsys)
    assert rc == 1, out
    assert "differs from the signed" in out
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["event"] for r in recs][-1] == "tamper.detected"
    assert not any(r["event"] == "load.ok" for r in recs)


def test_listing_adds_an_unsigned_shard(tmp_path: Path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    _model(d, sign_keys)
    write_st(d / "extra.safetensors", [("x", "F32", (4,))], seed=9)
    audit, sink = memory_audit()
    with pytest.raises(CoverageError, match=r"extra\.safetensors"):
        loader.load_file(d, policy=sign_keys.policy(), audit=audit)
    _assert_refused(sink)


def test_listing_omits_a_signed_shard(tmp_path: Path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    _model(d, sign_keys)
    (d / SHARDS[1]).unlink()
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError, match=r"signed files are missing.*00002"):
        loader.load_file(d, policy=sign_keys.policy(), audit=audit)
    _assert_refused(sink)


def _push(d: Path, bucket: str, prefix: str) -> str:
    from weightguard_cli.main import cli

    res = CliRunner().invoke(cli, ["push", str(d), f"s3://{bucket}/{prefix}"])
    assert res.exit_code == 0, res.output
    return f"s3://{bucket}/{prefix}/"


def _client(s3) -> object:  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name="us-east-1",
    )


def test_index_rewrite_same_length_s3(tmp_path: Path, s3_env, bucket, sign_keys) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    _model(d, sign_keys)
    src = _push(d, bucket, "models/steer")
    assert len(loader.load_file(src, policy=sign_keys.policy(), audit=memory_audit()[0]))
    _drop_shard_same_length(d / INDEX)
    _client(s3_env).put_object(
        Bucket=bucket, Key=f"models/steer/{INDEX}", Body=(d / INDEX).read_bytes()
    )
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError, match="differs from the signed"):
        loader.load_file(src, policy=sign_keys.policy(), audit=audit)
    _assert_refused(sink)
    # the same through `weightguard fetch`: nothing written
    from weightguard.transfer import fetch_model

    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="differs from the signed"):
        fetch_model(src, out, policy=sign_keys.policy(), allow_disk=True, audit=memory_audit()[0])
    assert not out.exists()


class _ListingWithKey:
    """The real SeaweedFS client, with one extra key in its listings.

    SeaweedFS refuses to store keys with ``..`` segments (InvalidRequest), but AWS S3
    stores and lists them verbatim, so the hostile key is added to the real listing
    here; every other call goes to the real server.
    """

    def __init__(self, client: Any, key: str) -> None:
        self._client, self._key = client, key

    def list_objects_v2(self, **kw: Any) -> dict[str, Any]:
        page = self._client.list_objects_v2(**kw)
        page.setdefault("Contents", []).append({"Key": self._key, "Size": 5, "ETag": '"x"'})
        return page

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_key_escaping_the_destination(tmp_path: Path, s3_env, bucket, sign_keys) -> None:  # type: ignore[no-untyped-def]
    from weightguard.policy import UnsafeNoVerification
    from weightguard.transfer import fetch_model

    d = tmp_path / "m"
    _model(d, sign_keys)
    src = _push(d, bucket, "models/esc/inner")
    client = _ListingWithKey(_client(s3_env), "models/esc/inner/../../escape.txt")
    dest = tmp_path / "a" / "b" / "to"
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match=r"escape.txt' has an empty, '.' or '..' component"):
        fetch_model(
            src, dest, policy=UnsafeNoVerification(), allow_disk=True,
            s3=S3Options(client=client), audit=audit,
        )  # fmt: skip
    assert not dest.exists()
    assert [p for p in tmp_path.rglob("*") if p.name == "escape.txt"] == []
    denied = last(sink, "load.denied")
    assert denied["outcome"] == "denied" and "FormatError" in denied["reason"]
    # a signed load of the same prefix refuses too: the listing is untrusted input
    with pytest.raises(FormatError, match=r"'\.\.' component"):
        loader.load_file(src, policy=sign_keys.policy(), s3=S3Options(client=client),
                         audit=memory_audit()[0])  # fmt: skip


def test_fetch_refuses_unsafe_name_before_writing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The CLI path: an unsigned index naming ``../x`` writes nothing outside --to."""
    d = tmp_path / "m"
    d.mkdir()
    write_st(d / "a.safetensors", [("x", "F32", (4,))], seed=1)
    (d / INDEX).write_text(json.dumps({"weight_map": {"x": "../escape.safetensors"}}))
    dest = tmp_path / "to"
    log = tmp_path / "audit.jsonl"
    rc, out = _cli(
        ["fetch", str(d), "--to", str(dest), "--allow-disk", "--unsafe-no-verification",
         "--audit-log", str(log)],
        capsys,
    )  # fmt: skip
    assert rc == 1 and "'..' component" in out, out
    assert not dest.exists() and not (tmp_path / "escape.safetensors").exists()
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert recs[-1]["event"] == "load.denied" and "FormatError" in recs[-1]["reason"]


@pytest.mark.parametrize(
    "name",
    ["../x", "a/../b", "/etc/passwd", "a\\b", "a\x00b", "a\nb", "a//b", "", "./a",
     "a/", "\x7f", "a\x85b"],
)  # fmt: skip
def test_unsafe_names_refused(name: str) -> None:
    with pytest.raises(FormatError, match=r"^where: "):
        safe_relative_name(name, "where")


@pytest.mark.parametrize("name", ["a", "sub/b.json", "model-00001-of-00002.safetensors", "é"])
def test_safe_names_pass(name: str) -> None:
    assert safe_relative_name(name, "where") == name


def test_unsafe_shard_name_in_unsigned_index(tmp_path: Path) -> None:
    from weightguard.policy import UnsafeNoVerification

    d = tmp_path / "m"
    d.mkdir()
    write_st(d / "a.safetensors", [("x", "F32", (4,))], seed=1)
    (d / INDEX).write_text(json.dumps({"weight_map": {"x": "../a.safetensors"}}))
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match=r"'\.\.' component"):
        loader.load_file(d, policy=UnsafeNoVerification(), audit=audit)
    assert last(sink, "load.denied")["outcome"] == "denied"
