"""Hostile S3 servers: a listing is bounded in keys, pages, bytes and time, and refused
whole with a typed, audited error (issue 22: a server answering "truncated" forever hung
a signed ``load_file`` with nothing audited; new keys on every page grew memory without
limit).

The server is a few lines of ``http.server`` on 127.0.0.1 speaking just enough of
ListObjectsV2 (and 404 to everything else); botocore signs and parses as it does with
the real thing.  Every case must end in well under the time the test allows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.support.adversarial import memory_audit
from weightguard import loader
from weightguard.errors import SourceError
from weightguard.manifest import RetryPolicy, S3Options

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _page(keys: list[tuple[str, int]], token: str | None) -> bytes:
    items = "".join(
        f"<Contents><Key>{k}</Key><Size>{n}</Size><ETag>&quot;e&quot;</ETag></Contents>"
        for k, n in keys
    )
    more = (
        f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
        if token
        else "<IsTruncated>false</IsTruncated>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
        f"<Name>b</Name><Prefix>m/</Prefix><KeyCount>{len(keys)}</KeyCount>"
        f"<MaxKeys>1000</MaxKeys>{more}{items}</ListBucketResult>"
    ).encode()


Behaviour = Callable[[BaseHTTPRequestHandler, int], None]


def _send(h: BaseHTTPRequestHandler, body: bytes, length: int | None = None) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/xml")
    h.send_header("Content-Length", str(len(body) if length is None else length))
    h.end_headers()
    h.wfile.write(body)


def endless_empty(h: BaseHTTPRequestHandler, n: int) -> None:
    _send(h, _page([], f"t{n}"))


def endless_new_keys(h: BaseHTTPRequestHandler, n: int) -> None:
    _send(h, _page([(f"m/shard-{n}-{i}.safetensors", 8) for i in range(1000)], f"t{n}"))


def same_token(h: BaseHTTPRequestHandler, n: int) -> None:
    _send(h, _page([(f"m/f{n}", 8)], "again"))


def huge_page(h: BaseHTTPRequestHandler, n: int) -> None:
    # One page claiming 2 GB: the body is streamed until the byte budget says stop.
    head = _page([("m/a", 8)], None)[: -len(b"</ListBucketResult>")]
    h.send_response(200)
    h.send_header("Content-Length", str(2 << 30))
    h.end_headers()
    h.wfile.write(head)
    pad = b"<!--" + b"x" * (1 << 20) + b"-->"
    try:
        for _ in range(2048):
            h.wfile.write(pad)
    except OSError:
        return  # the client hung up: what it should do


def slow_body(h: BaseHTTPRequestHandler, n: int) -> None:
    body = _page([("m/a", 8)], None)
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    try:
        for i in range(len(body)):  # one byte every 50 ms: never a read timeout
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()
            time.sleep(0.05)
    except OSError:
        return


class _Server:
    def __init__(self, behaviour: Behaviour) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                q = parse_qs(urlparse(self.path).query)
                if q.get("list-type") == ["2"]:
                    outer.requests += 1
                    behaviour(self, outer.requests)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Behaviour], _Server]]:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    servers: list[_Server] = []

    def start(behaviour: Behaviour) -> _Server:
        servers.append(_Server(behaviour))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _options(url: str, **bounds: Any) -> S3Options:
    return S3Options(
        endpoint_url=url,
        retry=RetryPolicy(max_attempts=1),
        read_timeout_s=5.0,
        connect_timeout_s=2.0,
        **bounds,
    )


CASES: dict[str, tuple[Behaviour, dict[str, Any], str]] = {
    "endless truncation": (endless_empty, {"max_list_pages": 20}, "more than 20 pages"),
    "new keys every page": (
        endless_new_keys,
        {"max_list_keys": 10_000},
        "more than 10000 keys",
    ),
    "repeated token": (same_token, {}, "a truncated page without a new continuation token"),
    "huge page": (huge_page, {"max_list_bytes": 4 << 20}, "more than 4194304 bytes"),
    "slow body": (slow_body, {"list_timeout_s": 1.0}, "not complete after 1 s"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_listing_is_refused_typed_audited_and_bounded(
    serve: Callable[[Behaviour], _Server], case: str
) -> None:
    from weightguard.policy import UnsafeNoVerification

    behaviour, bounds, message = CASES[case]
    server = serve(behaviour)
    audit, sink = memory_audit()
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=f"listing refused: {message}"):
        loader.load_file(
            "s3://b/m/",
            policy=UnsafeNoVerification(),
            s3=_options(server.url, **bounds),
            audit=audit,
        )
    took = time.monotonic() - t0
    assert took < 10, f"{case}: refused only after {took:.1f} s"
    denied = [r for r in sink.records if r.get("event") == "load.denied"]
    assert denied and "listing refused" in denied[0]["reason"], sink.records


def test_default_bounds_admit_a_large_honest_listing(
    serve: Callable[[Behaviour], _Server],
) -> None:
    """Twelve pages of 1000 keys and a last page: listed in full under the defaults."""
    from weightguard._internal.foundation.s3 import read_client
    from weightguard._internal.load.sources import s3_list

    def honest(h: BaseHTTPRequestHandler, n: int) -> None:
        keys = [(f"m/part-{n:03d}-{i:04d}.bin", 8) for i in range(1000 if n <= 12 else 7)]
        _send(h, _page(keys, f"t{n}" if n <= 12 else None))

    server = serve(honest)
    options = _options(server.url)
    got = list(s3_list(read_client(options), "b", "m/", options))
    assert len(got) == 12_007 and server.requests == 13


def test_push_refuses_a_listing_that_repeats_itself(
    serve: Callable[[Behaviour], _Server], tmp_path: Any
) -> None:
    """push lists the destination prefix first (an existing release is not overwritten):
    a store repeating its continuation token is refused, not listed forever."""
    from weightguard.errors import DestinationError
    from weightguard.transfer import push_model

    server = serve(same_token)
    (tmp_path / "config.json").write_text("{}")
    t0 = time.monotonic()
    with pytest.raises(DestinationError, match=r"listing s3://b/m/ does not end"):
        push_model(tmp_path, "s3://b/m/", endpoint_url=server.url)
    assert time.monotonic() - t0 < 10 and server.requests == 2
