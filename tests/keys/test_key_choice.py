"""The caller decides where keys come from (issue 12 item 2).

An artifact header's key reference is read before anything can be authenticated, so
an attacker who can write the artifact chooses it.  Each refusal below must be one
typed error, quickly (no read of /dev/zero, no wait on a FIFO), with an audit event.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.support.format import build_safetensors, raw_header, replace_header
from tests.support.load import memory_audit
from weightguard import crypt, loader
from weightguard._internal.format.layout import canonical_json
from weightguard._internal.keys.providers import (
    ALLOW_KEY_ENV,
    MAX_KEY_FILE,
    allowed_key_patterns,
    choose_key_uri,
)
from weightguard.errors import KeyAccessDenied, KeyProviderError
from weightguard.policy import UnsafeNoVerification


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)
    monkeypatch.delenv(ALLOW_KEY_ENV, raising=False)


def _artifact(tmp_path: Path, header_uri: str | None = None) -> tuple[Path, str]:
    """An artifact (file key) whose header names ``header_uri`` instead (MAC kept)."""
    key = f"file://{crypt.create_key_file(tmp_path / 'dev.key')}"
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"w": ("U8", [5000], os.urandom(5000))}))
    enc = tmp_path / "m.enc"
    crypt.encrypt_file(src, enc, key, chunk_size=4096)
    if header_uri is not None:
        data = enc.read_bytes()
        _, js, _ = raw_header(data)
        header = json.loads(js)
        header["wrapped_key"]["uri"] = header_uri
        enc.write_bytes(replace_header(data, canonical_json(header)))
    return enc, key


def _fast(fn, *args, **kw):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    try:
        fn(*args, **kw)
    finally:
        assert time.monotonic() - t0 < 5, "refusal was not quick"


# --------------------------------------------------------------------------- the rule


def test_choose_key_uri_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    # the caller's explicit key always wins
    assert choose_key_uri("file:///dev/zero", key="vault://transit/m") == "vault://transit/m"
    # file:// from a header: only when named exactly, never by a wildcard
    with pytest.raises(KeyAccessDenied, match="used only when the caller names it"):
        choose_key_uri("file:///etc/k", where="a.enc")
    with pytest.raises(KeyAccessDenied, match="only when the caller names it"):
        choose_key_uri("file:///etc/k", allowed=["file:///etc/*", "*"])
    assert choose_key_uri("file:///etc/k", allowed=["file:///etc/k"]) == "file:///etc/k"
    # remote references: any without a list (caller's server and credentials), else matched
    assert choose_key_uri("vault://transit/m") == "vault://transit/m"
    assert choose_key_uri("vault://transit/m", allowed="vault://transit/*") == "vault://transit/m"
    with pytest.raises(KeyAccessDenied, match=r"not in the allowed keys \(vault://transit/\*\)"):
        choose_key_uri("vault://other/m", allowed=["vault://transit/*"])
    # odd references are refused whatever the list says
    for bad in ("vault://transit/../sys/m", "vault://t/m?x=1", "vault://t/ m", "file:///a/./b"):
        with pytest.raises(KeyAccessDenied, match="not a valid key URI"):
            choose_key_uri(bad, allowed=["*"])
    # the environment adds to the parameter
    monkeypatch.setenv(ALLOW_KEY_ENV, "vault://a/*, awskms://alias/x\nfile:///k")
    assert allowed_key_patterns(["vault://b/*"]) == (
        "vault://b/*",
        "vault://a/*",
        "awskms://alias/x",
        "file:///k",
    )
    assert choose_key_uri("file:///k") == "file:///k"
    with pytest.raises(KeyAccessDenied, match="not in the allowed keys"):
        choose_key_uri("vault://transit/m")


# --------------------------------------------------------------------------- /dev/zero


def test_header_names_dev_zero(tmp_path: Path) -> None:
    enc, _ = _artifact(tmp_path, "file:///dev/zero")
    audit, sink = memory_audit()
    with pytest.raises(KeyAccessDenied, match="names key file 'file:///dev/zero'"):
        _fast(crypt.decrypt_file, enc, tmp_path / "out", audit=audit)
    assert sink.records[-1]["event"] == "decrypt"
    assert sink.records[-1]["outcome"] == "error"
    assert "file:///dev/zero" in sink.records[-1]["reason"]
    assert not (tmp_path / "out").exists()

    audit, sink = memory_audit()
    with pytest.raises(KeyAccessDenied, match="caller names it"):
        _fast(crypt.inspect, enc, verify=True, audit=audit)
    assert sink.records[-1]["event"] == "verify.failed"
    assert sink.records[-1]["reason"].startswith("inspect --verify: ")

    audit, sink = memory_audit()
    with pytest.raises(KeyAccessDenied, match="caller names it"):
        _fast(loader.load_file, enc, policy=UnsafeNoVerification(), audit=audit)
    assert sink.records[-1]["event"] == "load.denied"
    assert sink.records[-1]["reason"].startswith("KeyAccessDenied")

    audit, sink = memory_audit()
    before = enc.read_bytes()
    with pytest.raises(KeyAccessDenied, match="caller names it"):
        _fast(crypt.rewrap, enc, audit=audit)
    assert sink.records[-1]["event"] == "rewrap" and sink.records[-1]["outcome"] == "error"
    assert enc.read_bytes() == before

    # even when the caller names it, a device is not a key file: refused before reading
    audit, sink = memory_audit()
    with pytest.raises(KeyProviderError, match="/dev/zero is not a regular file"):
        _fast(crypt.decrypt_file, enc, tmp_path / "out", data_key="file:///dev/zero", audit=audit)
    assert sink.records[-1]["event"] == "decrypt"


def test_cli_decrypt_and_inspect_refuse_header_key_file(tmp_path: Path) -> None:
    enc, _ = _artifact(tmp_path, "file:///dev/zero")
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(log)}
    env.pop(ALLOW_KEY_ENV, None)
    for argv in (
        ["decrypt", str(enc), "-o", str(tmp_path / "out")],
        ["inspect", str(enc), "--verify"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "weightguard_cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 1, proc.stderr
        assert "a key file is used only when the caller names it" in proc.stderr
        assert "--allow-key PATTERN" in proc.stderr
    events = [json.loads(x)["event"] for x in log.read_text().splitlines()]
    assert events == ["decrypt", "verify.failed"]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- FIFO, size


def test_fifo_key_file_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    enc, _ = _artifact(tmp_path, f"file://{fifo}")
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(log)}
    # the caller even allows it: the FIFO is still refused, without waiting for a writer
    argv = ["decrypt", str(enc), "-o", str(tmp_path / "out"), "--allow-key", f"file://{fifo}"]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "weightguard_cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 1
    assert f"key file {fifo} is not a regular file" in proc.stderr
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["event"] == "decrypt" and rec["outcome"] == "error"


def test_oversized_key_file_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.key"
    big.write_bytes(b"0" * (64 << 20))
    enc, _ = _artifact(tmp_path)
    with pytest.raises(KeyProviderError, match=f"is {64 << 20} bytes; a key file holds 32"):
        _fast(crypt.decrypt_file, enc, tmp_path / "out", data_key=f"file://{big}")
    assert MAX_KEY_FILE < 64 << 20


# --------------------------------------------------------------------------- vault


def test_disallowed_vault_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Vault is contacted: the address below accepts no connections."""
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")
    enc, _ = _artifact(tmp_path, "vault://secret-mount/other-teams-key")
    audit, sink = memory_audit()
    with pytest.raises(KeyAccessDenied, match=r"not in the allowed keys \(vault://transit/\*\)"):
        _fast(crypt.decrypt_file, enc, tmp_path / "o", allow_key=["vault://transit/*"], audit=audit)
    assert sink.records[-1]["event"] == "decrypt"
    monkeypatch.setenv(ALLOW_KEY_ENV, "vault://transit/*")
    audit, sink = memory_audit()
    with pytest.raises(KeyAccessDenied, match="not in the allowed keys"):
        _fast(loader.load_file, enc, policy=UnsafeNoVerification(), audit=audit)
    assert sink.records[-1]["event"] == "load.denied"
    with pytest.raises(KeyAccessDenied, match="not in the allowed keys"):
        _fast(crypt.inspect, enc, verify=True)
