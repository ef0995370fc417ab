"""End to end: push to SeaweedFS S3, load back from S3 with the data key from OpenBao."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.faults import FaultProxy
from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    encrypt,
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard import loader
from weightguard._internal.load.sources import RetryPolicy, S3Options
from weightguard.errors import (
    KeyAccessDenied,
    KeyUnavailableError,
    SourceError,
    UnsafeOptionRequired,
)

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture
def vault_model(tmp_path, vault_env, s3_env, bucket, sign_keys):  # type: ignore[no-untyped-def]
    bao = vault_env
    name = "m-" + secrets.token_hex(4)
    bao.client().secrets.transit.create_key(name=name, derived=True, mount_point="transit")
    uri = f"vault://transit/{name}"
    d = tmp_path / "release"
    d.mkdir()
    expected = {}
    for i in (1, 2):
        plain = tmp_path / f"p{i}.safetensors"
        layout = [(f"s{i}.{n}", dt, shape) for n, dt, shape in MODEL_LAYOUT]
        expected |= write_st(plain, layout, seed=i)
        encrypt(
            plain,
            d / f"model-0000{i}-of-00002.safetensors",
            uri,
            chunk_size=8192,
            context="models/test",
        )
    wm = {k: f"model-0000{k[1]}-of-00002.safetensors" for k in expected}
    import json

    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    (d / "config.json").write_text('{"arch": "test"}')
    sign(d, d / "model.sig", sign_keys)
    from weightguard_cli.main import cli

    res = CliRunner().invoke(cli, ["push", str(d), f"s3://{bucket}/models/test"])
    assert res.exit_code == 0, res.output
    assert "ok: 5 files" in res.output
    return f"s3://{bucket}/models/test/", expected, uri, d


def test_load_from_s3_with_openbao_key(vault_model, sign_keys) -> None:
    src, expected, uri, _ = vault_model
    audit, sink = memory_audit()
    got = loader.load_file(src, policy=sign_keys.policy(), audit=audit)
    assert_same(got, expected)
    names = [r["event"] for r in sink.records]
    assert names == ["load.start", "verify.ok", "key.unwrap", "load.ok"]
    unwrap = last(sink, "key.unwrap")
    assert unwrap["extra"] == {"files": 2, "round_trips": 1}
    # NOTE: the audit sanitizer currently redacts "vault://..." URIs (reported to audit).
    assert unwrap["object"]["key_id"] in (uri, "vault:[redacted]")
    assert unwrap["object"]["key_version"] == "1"
    ok = last(sink, "load.ok")
    assert ok["object"]["uri"] == src and ok["object"]["signer"]
    # subset from S3
    with loader.open_model(src, policy=sign_keys.policy(), audit=audit) as m:
        part = m.load(["s2.w.f16"])
        assert list(part) == ["s2.w.f16"]
        assert_same(part, {"s2.w.f16": expected["s2.w.f16"]})


def test_fetch_to_tmpfs(vault_model, sign_keys, tmp_path) -> None:
    src, _, _, release = vault_model
    from weightguard.transfer import fetch_model

    audit, sink = memory_audit()
    with pytest.raises(UnsafeOptionRequired, match="not on tmpfs"):
        fetch_model(src, tmp_path / "out", policy=sign_keys.policy(), audit=audit)
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    out = shm / ("wg-test-" + secrets.token_hex(4))
    try:
        res = fetch_model(src, out, policy=sign_keys.policy(), audit=audit)
        assert sorted(res.files) == [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ]
        from safetensors.torch import load_file as st_load

        for i in (1, 2):
            f = out / f"model-0000{i}-of-00002.safetensors"
            assert (f.stat().st_mode & 0o777) == 0o600
            assert f.read_bytes() == (release.parent / f"p{i}.safetensors").read_bytes()
            assert st_load(str(f))
        assert (out / "config.json").read_text() == '{"arch": "test"}'
        refused, fetched = ([r for r in sink.records if r.get("event") == "fetch"
                             and r.get("outcome") == o] for o in ("denied", "ok"))  # fmt: skip
        assert [r["object"]["destination"] for r in refused] == [str(tmp_path / "out")]
        assert len(fetched) == 1 and fetched[0]["object"]["destination"] == str(out)
        assert fetched[0]["object"]["files"] == 4 and fetched[0]["extra"]["memory_fs"] is True
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


def test_transit_policy_denies_decrypt(vault_model, sign_keys) -> None:
    src, _, uri, _ = vault_model
    bao_name = uri.rsplit("/", 1)[1]
    # a token that may only encrypt
    import hvac  # noqa: F401

    from tests.support.services import OpenBaoServer  # noqa: F401

    client_env = os.environ["VAULT_ADDR"]
    from weightguard._internal.foundation.vault import vault_client

    root = vault_client()
    root.sys.create_or_update_policy(
        "enc-only-" + bao_name,
        f'path "transit/encrypt/{bao_name}" {{ capabilities = ["update"] }}',
    )
    tok = root.auth.token.create(policies=["enc-only-" + bao_name], ttl="10m")["auth"][
        "client_token"
    ]
    audit, sink = memory_audit()
    with pytest.raises(KeyAccessDenied) as e:
        loader.load_file(
            src,
            policy=sign_keys.policy(),
            audit=audit,
            key_options={"addr": client_env, "token": tok},
        )
    assert tok not in str(e.value)
    assert last(sink, "load.denied")["reason"].startswith("KeyAccessDenied")


def test_vault_down(vault_model, sign_keys) -> None:
    src, _, _, _ = vault_model
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    audit, sink = memory_audit()
    with pytest.raises(KeyUnavailableError):
        loader.load_file(
            src,
            policy=sign_keys.policy(),
            audit=audit,
            key_options={"addr": f"http://127.0.0.1:{port}", "token": "x"},
        )
    assert last(sink, "load.denied")


def test_s3_storm_during_load(vault_model, sign_keys, s3_env) -> None:
    src, expected, _, _ = vault_model
    with FaultProxy(s3_env.endpoint) as proxy:
        # The signature is now the first object read, and takes all four faults: enough
        # attempts for one request to see them all.
        storm = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.02)
        opts = S3Options(endpoint_url=proxy.endpoint, retry=FAST)
        proxy.fail_next = 2
        proxy.cut_next = 2
        proxy.cut_after = 3000
        audit, sink = memory_audit()
        got = loader.load_file(
            src,
            policy=sign_keys.policy(),
            audit=audit,
            s3=S3Options(endpoint_url=proxy.endpoint, retry=storm),
        )
        assert_same(got, expected)
        assert proxy.injected_500 == 2 and proxy.injected_cuts == 2
        proxy.fail_forever = True
        with pytest.raises(SourceError, match="failed after 3 attempts"):
            loader.load_file(src, policy=sign_keys.policy(), audit=audit, s3=opts)
        assert last(sink, "load.denied")["reason"].startswith("SourceError")


def test_s3_missing_object(s3_env, bucket, sign_keys) -> None:
    audit, sink = memory_audit()
    with pytest.raises(SourceError, match=f"s3://{bucket}/nope/: no such object or prefix"):
        loader.load_file(f"s3://{bucket}/nope/", policy=sign_keys.policy(), audit=audit)
    assert last(sink, "load.denied")


def test_s3_403_through_load_file(vault_model, sign_keys, s3_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A wrong S3 secret: SourceError naming access denied, audit load.denied, no tensors."""
    src, _, _, _ = vault_model
    bad = "wrong-" + secrets.token_hex(12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad)
    audit, sink = memory_audit()
    got = None
    with pytest.raises(SourceError, match="access denied") as e:
        got = loader.load_file(src, policy=sign_keys.policy(), audit=audit)
    assert got is None
    text = str(e.value)
    assert bad not in text and s3_env.secret_key not in text
    denied = last(sink, "load.denied")
    assert denied["outcome"] == "denied" and denied["reason"].startswith("SourceError")
    assert bad not in str(sink.records) and s3_env.secret_key not in str(sink.records)
    assert [r["event"] for r in sink.records] == ["load.start", "load.denied"]


def _decrypt_token(bao, key_uri: str, ttl: str) -> str:  # type: ignore[no-untyped-def]
    from tests.support.services import transit_policy_hcl

    name = key_uri.rsplit("/", 1)[1]
    bao.write_policy(f"dec-{name}", transit_policy_hcl(name, encrypt=False))
    return str(bao.create_token([f"dec-{name}"], ttl=ttl))


def _wait_expired(bao, tok: str, limit_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the server itself calls ``tok`` expired (a lookup with the root client
    fails), so the test does not depend on how fast a loaded machine runs the first load."""
    import time

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            bao.client().auth.token.lookup(tok)
        except Exception:  # hvac's Forbidden/InvalidRequest: the token is gone
            return
        time.sleep(0.2)
    raise AssertionError(f"token still valid after {limit_s} s")


def test_expired_vault_token_at_load(vault_model, sign_keys, vault_env) -> None:  # type: ignore[no-untyped-def]
    src, expected, uri, _ = vault_model
    audit, sink = memory_audit()
    # The policy works while a token is valid (a long-lived token, so a slow machine cannot
    # make this half flaky) ...
    valid = {"addr": vault_env.addr, "token": _decrypt_token(vault_env, uri, ttl="10m")}
    got = loader.load_file(src, policy=sign_keys.policy(), audit=audit, key_options=valid)
    assert_same(got, expected)
    # ... and the same grant in a token the server has expired is refused.
    tok = _decrypt_token(vault_env, uri, ttl="1s")
    _wait_expired(vault_env, tok)
    opts = {"addr": vault_env.addr, "token": tok}
    got = None
    with pytest.raises(KeyAccessDenied) as e:
        got = loader.load_file(src, policy=sign_keys.policy(), audit=audit, key_options=opts)
    assert got is None
    assert tok not in str(e.value) and tok not in str(sink.records)
    denied = last(sink, "load.denied")
    assert denied["reason"].startswith("KeyAccessDenied")
    assert "key.unwrap" not in [r["event"] for r in sink.records[-3:]]


def test_token_revoked_between_open_and_load(vault_model, sign_keys, vault_env) -> None:  # type: ignore[no-untyped-def]
    """Data keys are unwrapped once, at open: an open handle keeps working after the
    token is revoked (documented behaviour); every new open is refused."""
    src, expected, uri, _ = vault_model
    tok = _decrypt_token(vault_env, uri, ttl="10m")
    opts = {"addr": vault_env.addr, "token": tok}
    audit, sink = memory_audit()
    with loader.open_model(src, policy=sign_keys.policy(), audit=audit, key_options=opts) as m:
        vault_env.client().auth.token.revoke(tok)
        part = m.load(["s2.w.f16", "s1.ids"])
        assert_same(part, {k: expected[k] for k in ("s2.w.f16", "s1.ids")})
    with pytest.raises(KeyAccessDenied):
        loader.open_model(src, policy=sign_keys.policy(), audit=audit, key_options=opts)
    assert last(sink, "load.denied")["reason"].startswith("KeyAccessDenied")
