"""Sources: S3 (real SeaweedFS) incl. fault injection through a local TCP proxy."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from urllib.parse import urlparse

import pytest

from weightguard._internal.sources import RetryPolicy, S3Options, S3Source, open_location
from weightguard.errors import SourceError, TruncatedError

_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected by test proxy</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        u = urlparse(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.fail_next = 0  # answer this many requests with HTTP 500
        self.fail_forever = False
        self.cut_next = 0  # drop this many connections mid-response
        self.cut_forever = False
        self.cut_after = 64 * 1024
        self.only_ranged = True  # inject only into ranged GETs (not HEAD/list)
        self.injected_500 = 0
        self.injected_cuts = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_head(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
            if len(data) > 1 << 20:
                break
        return data

    def _handle(self, conn: socket.socket) -> None:
        try:
            head = self._read_head(conn)
            if not head:
                conn.close()
                return
            first = head.split(b"\r\n", 1)[0]
            ranged = first.startswith(b"GET ") and b"\r\nrange:" in head.lower()
            eligible = ranged or not self.only_ranged
            with self._lock:
                self.requests += 1
                action = "pass"
                if eligible and (self.fail_forever or self.fail_next > 0):
                    action = "500"
                    self.fail_next = max(0, self.fail_next - 1)
                    self.injected_500 += 1
                elif eligible and (self.cut_forever or self.cut_next > 0):
                    action = "cut"
                    self.cut_next = max(0, self.cut_next - 1)
                    self.injected_cuts += 1
            if action == "500":
                conn.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(_ERROR_BODY)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + _ERROR_BODY
                )
                conn.close()
                return
            up = socket.create_connection(self.upstream)
            up.sendall(self._one_request_per_connection(head))
            limit = self.cut_after if action == "cut" else None
            t = threading.Thread(target=self._pipe, args=(conn, up, None), daemon=True)
            t.start()
            self._pipe(up, conn, limit)
        except OSError:
            pass
        finally:
            for s in (conn,):
                with contextlib.suppress(OSError):
                    s.close()

    @staticmethod
    def _one_request_per_connection(head: bytes) -> bytes:
        # Ask the server to close after this response, so that every request arrives on a
        # fresh connection and is inspected.
        top, sep, rest = head.partition(b"\r\n\r\n")
        lines = [ln for ln in top.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        return b"\r\n".join([*lines, b"Connection: close"]) + sep + rest

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()


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
