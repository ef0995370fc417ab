"""Sources: S3 (real SeaweedFS) incl. fault injection through a local TCP proxy."""

from __future__ import annotations

import os
import secrets
import socket

import pytest

from tests.support.faults import (
    FaultProxy,
)
from weightguard._internal.load.sources import RetryPolicy, S3Options, S3Source, open_location
from weightguard.errors import SourceError, TruncatedError

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def blob(s3_env, bucket):  # type: ignore[no-untyped-def]
    data = secrets.token_bytes(3 * 1024 * 1024 + 12345)
    s3_env.client().put_object(Bucket=bucket, Key="models/m/blob.bin", Body=data)
    s3_env.client().put_object(Bucket=bucket, Key="models/m/small.json", Body=b'{"a": 1}')
    return bucket, "models/m/blob.bin", data


@pytest.fixture
def proxy(s3_env):  # type: ignore[no-untyped-def]
    with FaultProxy(s3_env.endpoint) as p:
        yield p


def _opts(endpoint: str | None = None, **kw) -> S3Options:  # type: ignore[no-untyped-def]
    kw.setdefault("retry", FAST_RETRY)
    return S3Options(endpoint_url=endpoint, **kw)


def test_ranged_reads_are_byte_exact(blob) -> None:  # type: ignore[no-untyped-def]
    bucket, key, data = blob
    with S3Source(bucket, key, _opts(part_size=256 * 1024, concurrency=4)) as src:
        assert src.size == len(data)
        assert src.name == f"s3://{bucket}/{key}"
        for off, n in [(0, 1), (0, 8), (17, 100_000), (len(data) - 5, 5), (1 << 20, 1 << 20)]:
            buf = bytearray(n)
            src.read_into(off, buf)
            assert bytes(buf) == data[off : off + n]
        whole = bytearray(len(data))  # split into 13 concurrent ranged GETs
        src.read_into(0, memoryview(whole))
        assert bytes(whole) == data
        with pytest.raises(TruncatedError, match="past the end"):
            src.read_into(len(data) - 2, bytearray(4))


def test_location_lists_prefix_and_opens_object(blob) -> None:  # type: ignore[no-untyped-def]
    bucket, key, data = blob
    loc = open_location(f"s3://{bucket}/models/m", s3=_opts())
    assert loc.is_dir and loc.is_s3
    assert loc.names() == ["blob.bin", "small.json"]
    assert loc.read_small("small.json") == b'{"a": 1}'
    with loc.open("blob.bin") as src:
        assert src.read(5, 10) == data[5:15]
    single = open_location(f"s3://{bucket}/{key}", s3=_opts())
    assert not single.is_dir and single.names() == ["blob.bin"]
    assert single.read_small("small.json") == b'{"a": 1}'  # sibling of the object


def test_missing_object_names_bucket_and_key(s3_env, bucket) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SourceError, match=f"s3://{bucket}/nope/model.safetensors: not found"):
        S3Source(bucket, "nope/model.safetensors", _opts())
    with pytest.raises(SourceError, match="no such object or prefix"):
        open_location(f"s3://{bucket}/nope/", s3=_opts())


def test_bad_secret_is_access_denied_without_leaking(s3_env, blob, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bucket, key, _ = blob
    bad = "x" * 40
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad)
    with pytest.raises(SourceError, match="access denied") as info:
        S3Source(bucket, key, _opts())
    text = str(info.value)
    assert bad not in text and s3_env.secret_key not in text and s3_env.access_key not in text
    assert f"s3://{bucket}/{key}" in text


def test_5xx_storm_recovers_within_bounded_retries(blob, proxy) -> None:  # type: ignore[no-untyped-def]
    bucket, key, data = blob
    src = S3Source(bucket, key, _opts(proxy.endpoint))
    proxy.fail_next = 3
    buf = bytearray(1 << 20)
    src.read_into(4096, buf)
    assert bytes(buf) == data[4096 : 4096 + len(buf)]
    assert proxy.injected_500 == 3


def test_endless_5xx_storm_fails_after_max_attempts(blob, proxy) -> None:  # type: ignore[no-untyped-def]
    bucket, key, _ = blob
    src = S3Source(bucket, key, _opts(proxy.endpoint))
    proxy.fail_forever = True
    with pytest.raises(SourceError, match=r"bytes \[0, 1048576\): failed after 4 attempts") as e:
        src.read_into(0, bytearray(1 << 20))
    assert "HTTP 500" in str(e.value)
    assert proxy.injected_500 == 4


def test_connection_dropped_mid_chunk_is_retried(blob, proxy) -> None:  # type: ignore[no-untyped-def]
    bucket, key, data = blob
    src = S3Source(bucket, key, _opts(proxy.endpoint))
    proxy.cut_next = 2
    proxy.cut_after = 200_000  # headers + part of the 1 MiB body
    buf = bytearray(1 << 20)
    src.read_into(1000, buf)
    assert bytes(buf) == data[1000 : 1000 + len(buf)]
    assert proxy.injected_cuts == 2


def test_connection_always_dropped_fails_closed(blob, proxy) -> None:  # type: ignore[no-untyped-def]
    bucket, key, _ = blob
    src = S3Source(bucket, key, _opts(proxy.endpoint))
    proxy.cut_forever = True
    proxy.cut_after = 100_000
    with pytest.raises(SourceError, match="failed after 4 attempts"):
        src.read_into(0, bytearray(1 << 20))


def test_object_replaced_during_load_is_refused(blob, s3_env) -> None:  # type: ignore[no-untyped-def]
    bucket, key, data = blob
    src = S3Source(bucket, key, _opts())
    s3_env.client().put_object(Bucket=bucket, Key=key, Body=b"y" * len(data))
    with pytest.raises(SourceError, match="changed while it was being loaded"):
        src.read_into(0, bytearray(10))


def test_unreachable_endpoint_is_bounded(blob) -> None:  # type: ignore[no-untyped-def]
    bucket, key, _ = blob
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(SourceError, match="failed after 4 attempts"):
        S3Source(bucket, key, _opts(f"http://127.0.0.1:{port}"))


def test_no_env_credentials_leak_into_repr(s3_env) -> None:  # type: ignore[no-untyped-def]
    opts = _opts(s3_env.endpoint)
    assert s3_env.secret_key not in repr(opts)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in repr(opts)
