"""`weightguard push` retries what S3 asks it to retry, against the real SeaweedFS.

A small forwarding proxy on 127.0.0.1 answers the first PUTs with 503 SlowDown (what
S3 sends under load) and passes everything else through byte for byte, so the
signatures boto3 computed still verify at SeaweedFS.  The only thing simulated is the
overload; the upload, its retries and the stored bytes are real.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.services import SeaweedS3Server
from weightguard._internal.foundation.s3 import upload_client

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


def _push(rel: Path, dest: str, log: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightguard_cli", "push", str(rel), dest,
         "--audit-log", str(log), *extra],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_bytes().splitlines() if b'"push"' in x]


def test_push_is_audited_and_never_overwrites_a_release_silently(
    s3_env: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    c = s3_env.client()
    log = tmp_path / "audit.jsonl"
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "weights.bin").write_bytes(b"release one")
    (v1 / "model.sig").write_text('{"one": 1}')
    dest = f"s3://{bucket}/llm/v1"
    r = _push(v1, dest, log)
    assert r.returncode == 0, r.stderr
    ev = _events(log)
    assert len(ev) == 1 and ev[0]["outcome"] == "ok" and ev[0]["bytes"] == 21
    assert ev[0]["object"]["uri"] == f"{dest}/" and ev[0]["extra"]["files"] == 2
    assert ev[0]["extra"]["replaced"] == 0

    # a second push to the same prefix: refused, nothing sent, the refusal audited
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "shard.bin").write_bytes(b"release two")
    (v2 / "model.sig").write_text('{"two": 2}')
    r = _push(v2, dest, log)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"error: {dest}/ already holds a release (2 objects: ")
    assert "model.sig, weights.bin); nothing was uploaded" in r.stderr
    assert "pass --replace" in r.stderr
    assert c.get_object(Bucket=bucket, Key="llm/v1/model.sig")["Body"].read() == b'{"one": 1}'
    assert "Contents" not in c.list_objects_v2(Bucket=bucket, Prefix="llm/v1/shard")
    ev = _events(log)
    assert ev[-1]["outcome"] == "denied" and "already holds a release" in ev[-1]["reason"]
    # a prefix that only starts the same way is another release
    assert _push(v2, f"s3://{bucket}/llm/v10", log).returncode == 0

    # --replace: the prefix then holds exactly the new release
    r = _push(v2, dest, log, "--replace")
    assert r.returncode == 0, r.stderr
    assert "(replaced 2 objects)" in r.stdout
    keys = sorted(o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="llm/v1/")["Contents"])
    assert keys == ["llm/v1/model.sig", "llm/v1/shard.bin"]
    assert c.get_object(Bucket=bucket, Key="llm/v1/model.sig")["Body"].read() == b'{"two": 2}'
    ev = _events(log)[-1]
    assert ev["outcome"] == "ok" and ev["extra"]["replaced"] == 2 and ev["extra"]["removed"] == 1
    from weightguard.audit import verify_log

    assert verify_log(log).ok


def test_an_auditor_verifies_an_s3_release_without_the_data_key(
    s3_env: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    """`weightguard verify s3://bucket/prefix/`: the released ciphertext is checked byte
    for byte against the signatures with no data key anywhere (the key file is gone)."""
    from tests.support.load import MODEL_LAYOUT, encrypt, write_st
    from tests.support.signing import write_key
    from weightguard._internal.keys.providers import create_key_file
    from weightguard.audit import AuditLog, MemorySink
    from weightguard.signing import KeySigner, cosignature_path, sign_model
    from weightguard.transfer import push_model

    kek = tmp_path / "kek.hex"
    create_key_file(kek)
    rel = tmp_path / "release"
    rel.mkdir()
    write_st(tmp_path / "plain.safetensors", MODEL_LAYOUT)
    encrypt(tmp_path / "plain.safetensors", rel / "model.safetensors", f"file://{kek}")
    (rel / "config.json").write_text('{"hidden": 64}')
    for who in ("release", "security"):
        write_key(tmp_path, who)
    sign_model(rel, rel / "model.sig", KeySigner.from_file(tmp_path / "release.pem"))
    cosig = cosignature_path(rel / "model.sig", "security")
    cosig.parent.mkdir()
    sign_model(rel, cosig, KeySigner.from_file(tmp_path / "security.pem"))
    dest = f"s3://{bucket}/llm/v1/"
    push_model(rel, dest, audit=AuditLog(MemorySink()))
    kek.unlink()  # the auditor has no data key; neither does anything here

    log = tmp_path / "audit.jsonl"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["TMPDIR"] = str(scratch)

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weightguard_cli", "verify", dest, "--audit-log", str(log),
             "--trust-key", str(tmp_path / "release.pub"), *extra],
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    r = verify()
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"OK: {dest} matches the released signature")
    assert "  config.json" in r.stdout and "  model.safetensors" in r.stdout
    r = verify("--trust-key", str(tmp_path / "security.pub"), "--require-all")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].count(";") == 1  # both signers
    ok = [json.loads(x) for x in log.read_bytes().splitlines()]
    assert [e["event"] for e in ok] == ["verify.ok", "verify.ok"]
    assert ok[0]["object"]["uri"] == dest and ok[0]["extra"]["hashed"] is True

    # one flipped ciphertext byte in the bucket: refused, naming the release
    c = s3_env.client()
    data = bytearray(c.get_object(Bucket=bucket, Key="llm/v1/model.safetensors")["Body"].read())
    data[-100] ^= 1
    c.put_object(Bucket=bucket, Key="llm/v1/model.safetensors", Body=bytes(data))
    r = verify()
    assert r.returncode == 1
    assert "model.safetensors" in r.stderr and str(scratch) not in r.stderr
    assert json.loads(log.read_bytes().splitlines()[-1])["event"] == "verify.failed"
    assert list(scratch.iterdir()) == []  # the temporary copies are gone
