"""Sources: local files and directories, cgroup-aware CPU count."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightguard._internal.foundation.cpus import cgroup_cpu_limit, usable_cpus
from weightguard._internal.foundation.s3 import parse_s3_uri
from weightguard._internal.load.sources import FileSource, open_location
from weightguard.errors import FormatError, SourceError, TruncatedError

DATA = secrets.token_bytes(100_003)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("src") / "blob.bin"
    p.write_bytes(DATA)
    return p


@settings(max_examples=60, deadline=None)
@given(off=st.integers(0, len(DATA)), n=st.integers(0, 70_000))
def test_file_ranges_are_byte_exact(data_file: Path, off: int, n: int) -> None:
    with FileSource(data_file) as src:
        buf = bytearray(n)
        if off + n > len(DATA):
            with pytest.raises(TruncatedError, match="past the end"):
                src.read_into(off, buf)
        else:
            src.read_into(off, memoryview(buf))
            assert bytes(buf) == DATA[off : off + n]


def test_file_truncated_while_loading(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 1000)
    src = FileSource(p)
    with open(p, "r+b") as fh:
        fh.truncate(500)
    with pytest.raises(TruncatedError, match="file ended at byte 500"):
        src.read_into(400, bytearray(200))
    src.close()


def test_missing_file_and_dir(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        FileSource(tmp_path / "nope.safetensors")
    with pytest.raises(SourceError, match="not a regular file"):
        FileSource(tmp_path)
    with pytest.raises(SourceError, match="no such file or directory"):
        open_location(tmp_path / "missing")


def test_directory_location(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_bytes(b"{}")
    (tmp_path / ".hidden").write_bytes(b"x")
    loc = open_location(tmp_path)
    assert loc.is_dir and not loc.is_s3
    assert loc.names() == ["a.safetensors", "sub/b.json"]
    assert loc.read_small("sub/b.json") == b"{}"
    with pytest.raises(FormatError, match=r"'\.\.' component"):
        loc.open("../etc/passwd")
    single = open_location(tmp_path / "a.safetensors")
    assert not single.is_dir and single.names() == ["a.safetensors"]
    assert not single.sibling_exists("a.safetensors.sig")


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://b/k/x") == ("b", "k/x")
    assert parse_s3_uri("s3://b") == ("b", "")
    with pytest.raises(SourceError, match="names no bucket"):
        parse_s3_uri("s3:///k")


def test_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    proc.write_text("3:cpu,cpuacct:/\n")
    assert cgroup_cpu_limit(v1, proc) == 3.0
    assert usable_cpus() >= 1
