"""One-pass hashing against a naive reference, across the read/hash pipeline's block
boundaries (small blocks force many blocks, partial last blocks and buffer reuse)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from weightguard._internal.signing import hashing
from weightguard._internal.signing.hashing import (
    BLAKE3_CHUNKED,
    SHA256_CHUNKED,
    HashJob,
    hash_files,
)
from weightguard.errors import SourceError


def _reference(data: bytes, head: int, stride: int, algorithm: str, whole: str):  # type: ignore[no-untyped-def]
    new = hashing.chunk_hasher(algorithm)
    ranges = [data[:head]] + [data[o : o + stride] for o in range(head, len(data), stride)]
    w = hashing.whole_hasher(whole)
    w.update(data)
    return w.digest(), tuple(new(r).digest() for r in ranges)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize(
    ("algorithm", "whole"), [(SHA256_CHUNKED, "sha256"), (BLAKE3_CHUNKED, "blake3")]
)
@pytest.mark.parametrize("size", [1_500_000, 2_097_152, 2_200_013])
def test_pipelined_hashing_matches_reference(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch, workers: int, algorithm: str, whole: str, size: int
) -> None:
    monkeypatch.setattr(hashing, "_TARGET_BLOCK", 64 * 1024)
    monkeypatch.setattr(hashing, "_MAX_BLOCK", 256 * 1024)
    data = os.urandom(size)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    head, stride = 1000, 16 * 1024
    job = HashJob("f.bin", str(p), size, head, stride, algorithm=algorithm, whole=whole)
    got = hash_files([job], workers=workers)["f.bin"]
    assert (got.whole, got.digests) == _reference(data, head, stride, algorithm, whole)
    if whole == "sha256":
        assert got.whole == hashlib.sha256(data).digest()


def test_file_that_shrinks_is_refused(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(hashing, "_TARGET_BLOCK", 64 * 1024)
    p = tmp_path / "f.bin"
    p.write_bytes(os.urandom(2_000_000))
    job = HashJob("f.bin", str(p), 3_000_000, 1000, 16 * 1024)  # claims more than there is
    with pytest.raises(SourceError, match=r"f\.bin: file shrank"):
        hash_files([job], workers=2)


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("size", [1_500_000, 2_200_013])
def test_verification_chunk_hashing_matches_reference(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch, mapped: bool, size: int
) -> None:
    """hash_chunks (verification) hashes from a read-only mapping, or with pread where
    mapping fails: the digests are the same either way."""
    from weightguard._internal.signing.hashing import hash_chunks

    monkeypatch.setattr(hashing, "_TARGET_BLOCK", 64 * 1024)
    if not mapped:

        def refuse(*_a: object, **_k: object) -> None:
            raise OSError("no mapping here")

        monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    data = os.urandom(size)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    head, stride = 70_001, 16 * 1024  # head not aligned to the mapping granularity
    job = HashJob("f.bin", str(p), size, head, stride, algorithm=BLAKE3_CHUNKED)
    got = hash_chunks([job], workers=2)["f.bin"]
    assert got.digests == _reference(data, head, stride, BLAKE3_CHUNKED, "blake3")[1]


def test_verification_refuses_a_file_whose_size_changed(tmp_path: Path) -> None:
    from weightguard._internal.signing.hashing import hash_chunks

    p = tmp_path / "f.bin"
    p.write_bytes(os.urandom(300_000))
    job = HashJob("f.bin", str(p), 400_000, 1000, 16 * 1024, algorithm=BLAKE3_CHUNKED)
    with pytest.raises(SourceError, match=r"f\.bin: file size changed"):
        hash_chunks([job], workers=2)


@pytest.mark.parametrize("mode", ["split", "together", "read"])
@pytest.mark.parametrize(
    ("algorithm", "whole"), [(SHA256_CHUNKED, "sha256"), (BLAKE3_CHUNKED, "blake3")]
)
def test_mapped_hashing_matches_reference(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch, mode: str, algorithm: str, whole: str
) -> None:
    """Signing's one pass over a mapping: chunk digests on other cores while this one
    computes the whole-file digest ("split"), both digests step by step on one core
    ("together"), or read into buffers where mapping fails ("read"): the same digests."""
    monkeypatch.setattr(hashing, "_STEP", 10_000)  # steps straddle every chunk boundary
    monkeypatch.setattr(hashing, "_TARGET_BLOCK", 64 * 1024)
    monkeypatch.setattr(hashing, "_SPLIT_MIN", 1 if mode == "split" else 1 << 40)
    if mode == "read":

        def refuse(*_a: object, **_k: object) -> None:
            raise OSError("no mapping here")

        monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    data = [os.urandom(n) for n in (1_500_001, 700_000, 3)]
    jobs = []
    for i, d in enumerate(data):
        (tmp_path / f"f{i}").write_bytes(d)
        jobs.append(HashJob(f"f{i}", str(tmp_path / f"f{i}"), len(d), 70_001, 16 * 1024,
                            algorithm=algorithm, whole=whole))  # fmt: skip
    calls: list[bool] = []
    real = hashing._hash_mapped

    def spy(job, mapped, pool):  # type: ignore[no-untyped-def]
        calls.append(pool is not None)
        return real(job, mapped, pool)

    monkeypatch.setattr(hashing, "_hash_mapped", spy)
    got = hash_files(jobs, workers=4 if mode == "split" else 2)  # split: fewer files than cores
    assert calls == {"split": [True, True], "together": [False, False], "read": []}[mode]
    for i, d in enumerate(data):
        assert (got[f"f{i}"].whole, got[f"f{i}"].digests) == _reference(
            d, 70_001, 16 * 1024, algorithm, whole
        )


@pytest.mark.parametrize("split", [True, False])
def test_file_changed_while_hashed_is_refused(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch, split: bool
) -> None:
    """Same size, new content or times while it is hashed: refused, never signed."""
    p = tmp_path / "f.bin"
    p.write_bytes(os.urandom(1_000_000))
    monkeypatch.setattr(hashing, "_SPLIT_MIN", 1 if split else 1 << 40)
    real = hashing._hash_mapped

    def touched(job, mapped, pool):  # type: ignore[no-untyped-def]
        out = real(job, mapped, pool)
        os.utime(p, ns=(1, 1))
        return out

    monkeypatch.setattr(hashing, "_hash_mapped", touched)
    job = HashJob("f.bin", str(p), 1_000_000, 1000, 16 * 1024, algorithm=BLAKE3_CHUNKED)
    with pytest.raises(SourceError, match=r"f\.bin: file changed while being hashed"):
        hash_files([job], workers=2)


def test_the_file_opened_is_the_file_hashed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A path replaced after it was opened is never hashed as if it were the file opened
    (small files are read with the caller's descriptor, not by reopening the path): the
    replaced file's unlinking is seen as a change, and refused."""
    p, other = tmp_path / "f.bin", tmp_path / "other.bin"
    data = os.urandom(5000)
    p.write_bytes(data)
    other.write_bytes(os.urandom(5000))
    real = hashing._hash_read

    def swapped(job, pool, fd):  # type: ignore[no-untyped-def]
        os.replace(other, p)
        return real(job, pool, fd)

    monkeypatch.setattr(hashing, "_hash_read", swapped)
    with pytest.raises(SourceError, match=r"f\.bin: file changed while being hashed"):
        hash_files([HashJob("f.bin", str(p), 5000, 5000, 16 * 1024)], workers=1)
    monkeypatch.setattr(hashing, "_hash_read", real)
    p.write_bytes(data)
    got = hash_files([HashJob("f.bin", str(p), 5000, 5000, 16 * 1024)], workers=1)["f.bin"]
    assert got.whole == hashlib.sha256(data).digest()


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("whole", ["sha256", "blake2b", "blake3"])
def test_whole_file_digests_only(tmp_path: Path, monkeypatch, mapped: bool, whole: str) -> None:  # type: ignore[no-untyped-def]
    """Verification's one hash per byte (``chunks=False``): every whole-file digest equals
    the plain hash of the file, mapped or read into buffers, across step boundaries; no
    chunk digest is computed (an unknown chunk algorithm is not even looked up); a file
    that grows while hashed is refused as in the two-hash pass."""
    monkeypatch.setattr(hashing, "_WHOLE_STEP", 10_000)
    monkeypatch.setattr(hashing, "_TARGET_BLOCK", 64 * 1024)
    if not mapped:

        def refuse(*_a: object, **_k: object) -> None:
            raise OSError("no mapping here")

        monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    data = [os.urandom(n) for n in (1_500_001, 65_536, 3, 0)]
    jobs = []
    for i, d in enumerate(data):
        (tmp_path / f"f{i}").write_bytes(d)
        jobs.append(HashJob(f"f{i}", str(tmp_path / f"f{i}"), len(d), 1000, 16 * 1024,
                            algorithm="no-such-chunk-algorithm", whole=whole))  # fmt: skip
    got = hash_files(jobs, workers=2, chunks=False)
    for i, d in enumerate(data):
        ref = hashing.whole_hasher(whole)
        ref.update(d)
        assert (got[f"f{i}"].whole, got[f"f{i}"].digests) == (ref.digest(), ())
    with (tmp_path / "f0").open("ab") as f:
        f.write(b"x")
    with pytest.raises(SourceError, match=r"f0: file grew while being hashed"):
        hash_files(jobs[:1], workers=1, chunks=False)


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("whole", ["sha256", "blake2b"])
def test_shard_digests_match_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapped: bool, whole: str
) -> None:
    """model_signing's ``shards``: each shard's plain digest, from a mapping of the range
    (offsets not on a page boundary) or pread into a buffer: the same digests; a file
    touched while hashed is refused."""
    from weightguard._internal.signing.hashing import hash_ranges
    from weightguard.manifest import FileDigests

    monkeypatch.setattr(hashing, "_WHOLE_STEP", 10_000)
    if not mapped:

        def refuse(*_a: object, **_k: object) -> None:
            raise OSError("no mapping here")

        monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    data, shard = os.urandom(1_000_003), 100_001
    (tmp_path / "f").write_bytes(data)
    n = -(-len(data) // shard)
    fd = FileDigests(len(data), shard, shard, (b"",) * n, b"", False, "sha256-chunked-v1", whole)
    got = hash_ranges([("f", str(tmp_path / "f"), fd)], whole, workers=2)

    def ref(b: bytes) -> bytes:
        h = hashing.whole_hasher(whole)
        h.update(b)
        return h.digest()

    assert got["f"] == tuple(ref(data[o : o + shard]) for o in range(0, len(data), shard))
    real = hashing.whole_hasher
    touches = iter(range(1, 1 << 30))

    class Touching:  # each update changes the file's times, as another writer would
        def __init__(self, *a: object, **k: object) -> None:
            self.h = real(*a, **k)  # type: ignore[arg-type]

        def update(self, b: object) -> None:
            t = next(touches)
            os.utime(tmp_path / "f", ns=(t, t))
            self.h.update(b)

        def digest(self) -> bytes:
            return self.h.digest()

    monkeypatch.setattr(hashing, "whole_hasher", Touching)
    with pytest.raises(SourceError, match=r"f: file changed while being hashed"):
        hash_ranges([("f", str(tmp_path / "f"), fd)], whole, workers=1)
