"""Whole models or nothing, and no plaintext left by a crash (issue 12 items 7 and 10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from tests.support.format import build_safetensors
from tests.support.load import memory_audit
from weightguard import crypt
from weightguard._internal.foundation import atomic
from weightguard.errors import FormatError, IntegrityError

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model.safetensors.index.json"


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)


def _encrypted_model(tmp_path: Path) -> tuple[Path, str]:
    key = f"file://{crypt.create_key_file(tmp_path / 'dev.key')}"
    src = tmp_path / "plain"
    src.mkdir()
    wm = {}
    for i, shard in enumerate(SHARDS):
        (src / shard).write_bytes(build_safetensors({f"w{i}": ("U8", [9000], os.urandom(9000))}))
        wm[f"w{i}"] = shard
    (src / INDEX).write_text(json.dumps({"weight_map": wm}))
    (src / "config.json").write_text("{}")
    enc = tmp_path / "enc"
    crypt.encrypt_model(src, enc, key, chunk_size=4096)
    return enc, key


def _nothing_left(tmp_path: Path, dst: Path) -> None:
    assert not dst.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".wgtmp")]


def _damage_magic(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[0] ^= 0xFF
    p.write_bytes(bytes(data))


def _truncate_half(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _truncate_to_4(p: Path) -> None:
    os.truncate(p, 4)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_damage_magic, "weight file is not a weightguard artifact"),
        (_truncate_half, r"record \d+ is incomplete"),
        (_truncate_to_4, "weight file is not a weightguard artifact"),
        (os.unlink, rf"the index lists shard '{SHARDS[1]}', which is missing"),
    ],
    ids=["magic", "truncated", "truncated-below-magic", "missing"],
)
def test_decrypt_model_whole_or_nothing(tmp_path: Path, damage, match: str) -> None:  # type: ignore[no-untyped-def]
    enc, key = _encrypted_model(tmp_path)
    damage(enc / SHARDS[1])
    dst = tmp_path / "dec"
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError, match=match):
        crypt.decrypt_model(enc, dst, data_key=key, audit=audit)
    _nothing_left(tmp_path, dst)
    rec = sink.records[-1]
    assert rec["event"] == "tamper.detected" and rec["outcome"] == "denied"
    assert "nothing was decrypted" in rec["reason"] or "incomplete" in rec["reason"]


def test_decrypt_model_cli_exit_code(tmp_path: Path) -> None:
    enc, key = _encrypted_model(tmp_path)
    _damage_magic(enc / SHARDS[0])
    log = tmp_path / "audit.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "weightguard_cli", "decrypt", str(enc), "-o",
         str(tmp_path / "dec"), "--key", key, "--audit-log", str(log)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "not a weightguard artifact" in proc.stderr
    assert json.loads(log.read_text().splitlines()[-1])["event"] == "tamper.detected"
    _nothing_left(tmp_path, tmp_path / "dec")


def test_unsafe_shard_name_in_index(tmp_path: Path) -> None:
    enc, key = _encrypted_model(tmp_path)
    (enc / INDEX).write_text(json.dumps({"weight_map": {"w0": "../../etc/passwd"}}))
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match=r"'\.\.' component"):
        crypt.decrypt_model(enc, tmp_path / "dec", data_key=key, audit=audit)
    assert sink.records[-1]["event"] == "decrypt"


# --------------------------------------------------------------------------- SIGKILL

_KILLED_DECRYPT = """
import os, sys, time
from pathlib import Path
from weightguard import crypt
from weightguard._internal.foundation import atomic

src, dst, key, marker, mode = sys.argv[1:6]
atomic.USE_O_TMPFILE = mode == "unnamed"

def progress(n):
    Path(marker).touch()
    time.sleep(120)  # killed here, mid-write

if dst.endswith("fetched"):
    from weightguard.transfer import fetch_model
    from weightguard.audit import AuditLog
    from weightguard.policy import UnsafeNoVerification

    def hook(name, index):
        if name.endswith("00002-of-00002.safetensors") and index == 2:
            progress(0)

    from weightguard._internal.devices.observe import observing

    with observing(before_record=hook):
        fetch_model(src, dst, policy=UnsafeNoVerification(), allow_disk=True, key=key,
                    workers=1, audit=AuditLog.open(marker + ".audit"))
elif Path(src).is_dir():
    crypt.decrypt_model(src, dst, data_key=key, progress=progress, workers=1)
else:
    crypt.decrypt_file(src, dst, data_key=key, progress=progress, workers=1)
"""


def _kill_mid_write(tmp_path: Path, src: Path, dst: Path, key: str, mode: str) -> None:
    marker = tmp_path / f"marker-{mode}-{dst.name}"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_DECRYPT), str(src), str(dst), key,
         str(marker), mode],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer exited before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _names(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*")}


@pytest.mark.skipif(not atomic.USE_O_TMPFILE, reason="no O_TMPFILE on this platform")
def test_sigkill_mid_decrypt_leaves_no_named_plaintext(tmp_path: Path) -> None:
    enc, key = _encrypted_model(tmp_path)
    shard = enc / SHARDS[0]
    before = _names(tmp_path)
    _kill_mid_write(tmp_path, shard, tmp_path / "out.safetensors", key, "unnamed")
    assert _names(tmp_path) - before == {"marker-unnamed-out.safetensors"}


@pytest.mark.skipif(not atomic.USE_O_TMPFILE, reason="no O_TMPFILE on this platform")
def test_sigkill_mid_model_decrypt_and_fetch(tmp_path: Path) -> None:
    enc, key = _encrypted_model(tmp_path)
    # decrypt of a directory: only the (empty) temporary directory can stay behind
    _kill_mid_write(tmp_path, enc, tmp_path / "dec", key, "unnamed")
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".dec.")]
    assert len(left) == 1 and not [p for p in left[0].rglob("*") if p.is_file()]
    # fetch, killed while the second shard streams: the first one has no name either
    dest = tmp_path / "fetched"
    _kill_mid_write(tmp_path, enc, dest, key, "unnamed")
    assert dest.is_dir() and not [p for p in dest.rglob("*") if p.is_file()]


def test_sigkill_named_fallback_is_cleaned_next_run(tmp_path: Path) -> None:
    enc, key = _encrypted_model(tmp_path)
    shard = enc / SHARDS[0]
    out = tmp_path / "out.safetensors"
    before = _names(tmp_path)
    _kill_mid_write(tmp_path, shard, out, key, "named")
    left = _names(tmp_path) - before - {"marker-named-out.safetensors"}
    assert len(left) == 1 and next(iter(left)).startswith(".out.safetensors.")
    assert next(iter(left)).endswith(".wgtmp")
    # a whole model directory: the killed run's temp directory is left, then cleaned
    _kill_mid_write(tmp_path, enc, tmp_path / "dec", key, "named")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dec.")]
    # the next run next to the same destinations removes both, then succeeds
    crypt.decrypt_file(shard, out, data_key=key)
    crypt.decrypt_model(enc, tmp_path / "dec", data_key=key)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".wgtmp")]
    assert out.read_bytes()[:8] != b"WGTENC01"


def test_clean_stale_spares_live_writers(tmp_path: Path) -> None:
    live = tmp_path / f".x.{os.getpid()}.abc.wgtmp"
    live.write_bytes(b"in progress")
    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process
    dead = tmp_path / f".x.{dead_pid}.abc.wgtmp"
    dead.write_bytes(b"stale")
    other = tmp_path / ".y.1.abc.wgtmp"
    other.write_bytes(b"another destination")
    similar = tmp_path / f".x.7.{dead_pid}.abc.wgtmp"  # the temp of destination "x.7"
    similar.write_bytes(b"x.7 in progress")
    assert atomic.clean_stale(tmp_path, "x") == [dead]
    assert live.exists() and other.exists() and similar.exists() and not dead.exists()
