"""Bad input and bad output: typed errors, clear messages, nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.format import build_safetensors
from weightguard import crypt
from weightguard._internal.foundation import atomic
from weightguard.errors import (
    DestinationError,
    FormatError,
    SourceError,
    TruncatedError,
)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)


@pytest.fixture
def key(tmp_path: Path) -> str:
    return f"file://{crypt.create_key_file(tmp_path / 'dev.key')}"


def _st_with_header(header: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


BAD_SAFETENSORS: dict[str, tuple[bytes, type[Exception], str]] = {
    "overlapping offsets": (
        _st_with_header({"a": _entry("U8", [8], 0, 8), "b": _entry("U8", [8], 4, 12)}, bytes(12)),
        FormatError,
        "overlaps the previous tensor",
    ),
    "out-of-range offsets": (
        _st_with_header({"a": _entry("U8", [8], 0, 8), "b": _entry("U8", [8], 8, 16)}, bytes(12)),
        FormatError,
        "past the end",
    ),
    "gap": (
        _st_with_header({"a": _entry("U8", [4], 0, 4), "b": _entry("U8", [4], 8, 12)}, bytes(12)),
        FormatError,
        "leaves a gap",
    ),
    "size mismatch": (
        _st_with_header({"a": _entry("F32", [4], 0, 8)}, bytes(8)),
        FormatError,
        "need 16",
    ),
    "uncovered tail": (
        _st_with_header({"a": _entry("U8", [4], 0, 4)}, bytes(8)),
        FormatError,
        "not covered",
    ),
    "unknown dtype": (
        _st_with_header({"a": _entry("Q7", [4], 0, 4)}, bytes(4)),
        FormatError,
        "unknown dtype",
    ),
    "bad shape": (
        _st_with_header({"a": _entry("U8", [-4], 0, 4)}, bytes(4)),
        FormatError,
        "invalid shape",
    ),
    "duplicate tensor": (
        struct.pack("<Q", 95)
        + b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        + b'"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'[:95].ljust(95)
        + bytes(2),
        FormatError,
        "duplicate JSON key|malformed JSON",
    ),
    "header length past EOF": (
        struct.pack("<Q", 5000) + b'{"a":1}',
        TruncatedError,
        "points past the end",
    ),
    "absurd header length": (
        struct.pack("<Q", 2**60) + b"{}",
        FormatError,
        "exceeds the 100000000-byte limit",
    ),
    "not JSON": (struct.pack("<Q", 4) + b"{abc", FormatError, "malformed JSON"),
    "not safetensors (text)": (b"hello world, this is a text file\n", FormatError, "exceeds"),
    "too short": (b"\x01\x02", TruncatedError, "too short"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_malformed_safetensors_input(tmp_path: Path, key: str, case: str) -> None:
    data, exc_type, fragment = BAD_SAFETENSORS[case]
    src = tmp_path / "bad.safetensors"
    src.write_bytes(data)
    with pytest.raises(exc_type, match=fragment):
        crypt.encrypt_file(src, tmp_path / "out.enc", key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "dev.key"]


def test_safetensors_library_agrees_on_bad_inputs(tmp_path: Path) -> None:
    """Everything we refuse, the safetensors library refuses too (we are not stricter
    than the format on well-formed files, nor laxer)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    for case, (data, _, _) in BAD_SAFETENSORS.items():
        with pytest.raises(SafetensorError):
            load(data)
            pytest.fail(case)


def test_already_encrypted_and_plain_inputs(tmp_path: Path, key: str) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"a": ("U8", [4], b"abcd")}))
    crypt.encrypt_file(src, tmp_path / "m.enc", key)
    with pytest.raises(FormatError, match="already a weightguard artifact"):
        crypt.encrypt_file(tmp_path / "m.enc", tmp_path / "again", key)
    with pytest.raises(FormatError, match="plain \\(unencrypted\\) safetensors"):
        crypt.decrypt_file(src, tmp_path / "d")
    with pytest.raises(FormatError, match="plain \\(unencrypted\\) safetensors"):
        crypt.inspect(src)
    (tmp_path / "junk").write_bytes(os.urandom(100))
    with pytest.raises(FormatError, match="not a weightguard artifact"):
        crypt.decrypt_file(tmp_path / "junk", tmp_path / "d")
    with pytest.raises(SourceError, match="does not exist"):
        crypt.encrypt_file(tmp_path / "missing", tmp_path / "x", key)
    with pytest.raises(TruncatedError, match="points past the end of the file"):
        (tmp_path / "short").write_bytes((tmp_path / "m.enc").read_bytes()[:30])
        crypt.decrypt_file(tmp_path / "short", tmp_path / "d")
    assert not (tmp_path / "d").exists() and not (tmp_path / "again").exists()


def test_bad_chunk_size_and_context(tmp_path: Path, key: str) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"a": ("U8", [4], b"abcd")}))
    with pytest.raises(FormatError, match="chunk size"):
        crypt.encrypt_file(src, tmp_path / "o", key, chunk_size=100)
    with pytest.raises(FormatError, match="chunk size"):
        crypt.encrypt_file(src, tmp_path / "o", key, chunk_size=2**30)
    from weightguard.errors import ConfigError

    with pytest.raises(ConfigError, match="context"):
        crypt.encrypt_file(src, tmp_path / "o", key, context="x" * 600)
    with pytest.raises(ConfigError, match="unsupported key URI"):
        crypt.encrypt_file(src, tmp_path / "o", "gcpkms://nope")
    assert not (tmp_path / "o").exists()


def test_model_dir_with_missing_shard(tmp_path: Path, key: str) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.safetensors").write_bytes(build_safetensors({"x": ("U8", [4], b"abcd")}))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})
    )
    with pytest.raises(FormatError, match=r"lists shard 'b\.safetensors'"):
        crypt.encrypt_model(d, tmp_path / "out", key)
    assert not (tmp_path / "out").exists()
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "f").write_text("x")
    (d / "model.safetensors.index.json").unlink()
    with pytest.raises(DestinationError, match="not an empty directory"):
        crypt.encrypt_model(d, tmp_path / "nonempty", key)


# --------------------------------------------------------------------------- destination


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _src(tmp_path: Path, size: int = 300_000) -> Path:
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"w": ("U8", [size], os.urandom(size))}))
    return src


def test_disk_full_real_tmpfs(tmp_path: Path, key: str) -> None:
    src = _src(tmp_path)
    with _tmpfs(tmp_path / f"full-{uuid.uuid4().hex[:6]}", "size=128k") as mnt:
        with pytest.raises(DestinationError, match="no space left"):
            crypt.encrypt_file(src, mnt / "m.enc", key, chunk_size=4096)
        assert list(mnt.iterdir()) == []


def test_read_only_destination(tmp_path: Path, key: str) -> None:
    src = _src(tmp_path, 100)
    with (
        _tmpfs(tmp_path / f"ro-{uuid.uuid4().hex[:6]}", "ro,size=64k") as mnt,
        pytest.raises(DestinationError, match="read-only"),
    ):
        crypt.encrypt_file(src, mnt / "m.enc", key)


def test_unwritable_output_directory(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path, 100)
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    if os.geteuid() == 0:  # root ignores mode bits: make the kernel's answer explicit

        def deny(*a: object, **k: object) -> object:
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(atomic.tempfile, "mkstemp", deny)
        monkeypatch.setattr(atomic, "USE_O_TMPFILE", False)
    with pytest.raises(DestinationError, match="permission denied"):
        crypt.encrypt_file(src, out / "m.enc", key)
    with pytest.raises(DestinationError, match="does not exist"):
        monkeypatch.undo()
        crypt.encrypt_file(src, tmp_path / "no" / "such" / "dir" / "m.enc", key)
    assert list(out.iterdir()) == []


def test_disk_full_midway_simulated(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from a write in the middle (after preallocation succeeded, e.g. on a file
    system without fallocate): the temp file is removed, the final name never appears,
    an existing file under the final name is left untouched."""
    src = _src(tmp_path)
    dst = tmp_path / "m.enc"
    dst.write_bytes(b"previous release")
    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(DestinationError, match="no space left"):
        crypt.encrypt_file(src, dst, key, chunk_size=4096, workers=2)
    monkeypatch.undo()
    assert dst.read_bytes() == b"previous release"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.key", "m.enc", "m.safetensors"]

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    crypt.encrypt_file(src, tmp_path / "ok.enc", key)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DestinationError, match="no space left"):
        crypt.decrypt_file(tmp_path / "ok.enc", tmp_path / "plain.safetensors", data_key=key)
    assert not (tmp_path / "plain.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".wgtmp")]


def test_model_dir_failure_leaves_nothing(tmp_path: Path, key: str) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.safetensors").write_bytes(build_safetensors({"x": ("U8", [4], b"abcd")}))
    (d / "b.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(FormatError):
        crypt.encrypt_model(d, tmp_path / "out", key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.key", "m"]
