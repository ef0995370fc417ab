"""`weightguard push` retries what S3 asks it to retry, against the real SeaweedFS.

A small forwarding proxy on 127.0.0.1 answers the first PUTs with 503 SlowDown (what
S3 sends under load) and passes everything else through byte for byte, so the
signatures boto3 computed still verify at SeaweedFS.  The only thing simulated is the
overload; the upload, its retries and the stored bytes are real.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.services import SeaweedS3Server
from weightguard._internal.load.push import upload_client

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class _Flaky(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, fail_puts: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.fail_puts = fail_puts
        self.puts = 0
        self.refused = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Flaky

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        t = self.rfile.readline()
                        raw += t
                        if t in (b"\r\n", b"\n", b""):
                            return raw
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        if self.command == "PUT":
            with self.server.lock:
                self.server.puts += 1
                fail = self.server.puts <= self.server.fail_puts
                self.server.refused += fail
            if fail:
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(SLOW_DOWN)
                self.close_connection = True
                return
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            conn.putheader(k, v)
        conn.endheaders(body or None)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True
        conn.close()

    do_PUT = do_GET = do_POST = do_HEAD = do_DELETE = _handle


@pytest.fixture
def flaky(s3: SeaweedS3Server) -> Iterator[_Flaky]:
    server = _Flaky(s3.endpoint, fail_puts=2)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_upload_client_retries_with_backoff() -> None:
    """Its own client: the read client's retries are off (reads retry themselves)."""
    cfg = upload_client("http://127.0.0.1:1")._client_config
    assert cfg.retries == {"total_max_attempts": 6, "mode": "standard"}


def test_push_retries_slow_down_and_uploads_every_byte(
    flaky: _Flaky, s3: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    rel = tmp_path / "rel"
    rel.mkdir()
    payload = os.urandom(300_000)
    (rel / "weights.bin").write_bytes(payload)
    (rel / "model.sig").write_text("{}")
    env = {**os.environ, **s3.env(), "WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "a.jsonl")}
    endpoint = f"http://127.0.0.1:{flaky.server_address[1]}"
    p = subprocess.run(
        [sys.executable, "-m", "weightguard_cli", "push", str(rel), f"s3://{bucket}/v1",
         "--endpoint-url", endpoint],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == (
        f"ok: 2 files, {len(payload) + 2} bytes to s3://{bucket}/v1"
    )
    assert flaky.refused == 2  # two 503s were answered, and retried
    got = s3.client().get_object(Bucket=bucket, Key="v1/weights.bin")["Body"].read()
    assert got == payload
