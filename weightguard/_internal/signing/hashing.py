"""Parallel one-pass hashing of model files for signing and verification.

For every file we compute, in ONE sequential read of the file:

* the OpenSSF model-signing resource digest of the whole file: SHA-256 or BLAKE3
  (``HashJob.whole``; model_signing's ``hash_type`` ``sha256`` / ``blake3``), and
* weightguard's chunk digests of ``[0, head)`` and of each
  ``[head + k*stride, min(head + (k+1)*stride, size))`` with the chunk algorithm:
  ``blake3-chunked-v1`` (BLAKE3, 32-byte output; the default) or ``sha256-chunked-v1``.

Every per-chunk digest in weightguard (signing, verification, the loader, fetch) is
computed through :func:`chunk_hasher`, so the algorithm named in the signed record is
the one used everywhere.

Verification (``verify_bundle``) needs only the first: ``hash_files(..., chunks=False)``
computes the whole-file digests alone, one hash per byte (the signed resource digests
prove the files; recomputing the signed chunk digests too is ``check_chunk_digests``).

How (:func:`hash_files`, signing and ``verify_bundle``): each file is mapped read-only
and hashed straight from the page cache (a ``read`` into a buffer costs a copy, about
0.1 CPU-s/GB, and with 16 MiB blocks sent every byte through memory three times).  The
whole-file digest is one sequential stream.  When fewer big files than cores are hashed
(one big file on 2 cores), a big file's chunk digests are computed on the other cores
while its whole-file digest is computed, so it costs about one SHA-256 pass of wall
time; otherwise every file is hashed on one core, fed 1 MiB at a time to the whole-file
hasher and then the chunk hasher (the second reads it from the CPU cache), files in
parallel.  The whole-file BLAKE3 of a large file uses blake3's own threads on machines
with >= 4 cores (``max_threads=AUTO``; the digest is the same as single-threaded, as
model_signing computes it).  Files under 64 KiB, and files that cannot be mapped, are
read into per-thread buffers (``readinto``).  A file whose identity, size or times
change while it is hashed is refused (``SourceError``); one cut short *while* mapped
ends the process with SIGBUS (nothing is signed, nothing reported as verified).

Cost against model_signing (SHA-256 plus the copy its 1 MiB ``read`` calls make): signing
pays SHA-256 plus the BLAKE3 chunk digests, so with every core busy it costs about 0.9x
model_signing's CPU time (a single big file's wall time is one SHA-256 pass when a second
core is free); verification pays SHA-256 alone, less than model_signing.  The per-GB
figures are measured by ``benchmarks.signverify`` (docs/performance.md, "Sign and
verify").
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import mmap
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from weightguard.errors import ConfigError, DependencyMissing, SourceError

__all__ = [
    "BLAKE3_CHUNKED",
    "CHUNK_ALGORITHMS",
    "DEFAULT_CHUNK_ALGORITHM",
    "DEFAULT_STRIDE",
    "SHA256_CHUNKED",
    "WHOLE_ALGORITHMS",
    "FileHashes",
    "HashJob",
    "Hasher",
    "chunk_digest",
    "chunk_hasher",
    "hash_chunks",
    "hash_files",
    "hash_ranges",
    "range_count",
    "whole_digest_size",
    "whole_hasher",
]

SHA256_CHUNKED = "sha256-chunked-v1"
BLAKE3_CHUNKED = "blake3-chunked-v1"
DEFAULT_CHUNK_ALGORITHM = BLAKE3_CHUNKED
CHUNK_ALGORITHMS = (BLAKE3_CHUNKED, SHA256_CHUNKED)
DEFAULT_STRIDE = 4 * 1024 * 1024
# Target bytes per read; rounded to whole strides so ranges never straddle blocks.
_TARGET_BLOCK = 16 * 1024 * 1024
_MAX_BLOCK = 64 * 1024 * 1024
_SMALL_FILE = 1024 * 1024
# Mapped files (the default path): bytes fed to the whole-file hasher and then the chunk
# hasher before the next step, so the second one reads them from the CPU cache, not
# memory.  Smaller files are read into a buffer (a mapping costs more than it saves).
_STEP = 1024 * 1024
_MAP_MIN = 64 * 1024
# A file at least this big gets its chunk digests hashed on other cores while its
# whole-file digest is computed, when fewer such files than cores are hashed.
_SPLIT_MIN = 32 * 1024 * 1024
# Bytes per update of a whole-file digest hashed alone from a mapping.
_WHOLE_STEP = 4 * 1024 * 1024
# OMS resource digests (model_signing ``serialization.hash_type`` / resource ``algorithm``).
# "blake2b" is model_signing's ``blake2`` (``hashlib.blake2b()``: 64-byte digest, no key,
# default parameters; model_signing names it "blake2b" in the bundle).
WHOLE_ALGORITHMS = ("sha256", "blake2b", "blake3")
# Files at least this big get a multi-threaded whole-file BLAKE3 (same digest) when the
# machine has at least _BLAKE3_MT_CPUS cores.  On 2 cores it does not help (measured on
# 1 GiB: 0.52-0.60 s single-threaded vs 0.61-0.68 s with threads): the chunk digests
# already keep the other core busy.
_BLAKE3_MT_MIN = 8 * 1024 * 1024
_BLAKE3_MT_CPUS = 4


class Hasher(Protocol):
    def update(self, data: Any, /) -> Any: ...
    def digest(self) -> bytes: ...


HasherFactory = Callable[..., Hasher]


_blake3: HasherFactory | None = None


def _blake3_factory() -> HasherFactory:
    global _blake3
    if _blake3 is not None:
        return _blake3
    try:
        from blake3 import blake3
    except ImportError as exc:  # pragma: no cover - blake3 is a runtime dependency
        raise DependencyMissing(
            f"chunk algorithm {BLAKE3_CHUNKED!r} needs the 'blake3' package ({exc})",
            hint="pip install 'blake3>=1.0' (or sign with --chunk-digest sha256)",
        ) from None
    _blake3 = blake3
    return blake3


def chunk_hasher(algorithm: str, *, path: str | None = None) -> HasherFactory:
    """Hasher constructor (``factory(data=b"")`` -> ``.update``/``.digest()``) for a chunk
    digest algorithm named in a signed record; digests are 32 bytes.

    An unknown name raises :class:`ConfigError` naming ``path`` (the file) and the name.
    """
    if algorithm == SHA256_CHUNKED:
        return hashlib.sha256
    if algorithm == BLAKE3_CHUNKED:
        return _blake3_factory()
    where = f"{path}: " if path else ""
    raise ConfigError(
        f"{where}unknown chunk digest algorithm {str(algorithm)[:64]!r}; "
        f"supported: {', '.join(CHUNK_ALGORITHMS)}",
        hint="sign the model again with this weightguard, or upgrade weightguard",
    )


def whole_hasher(algorithm: str, *, size: int = 0, path: str | None = None) -> Hasher:
    """A fresh whole-file hasher for an OMS resource digest algorithm: ``sha256``,
    ``blake2b`` (model_signing's ``blake2``: ``hashlib.blake2b()``, 64-byte digest) or
    ``blake3``; ``size`` >= 8 MiB on >= 4 cores gets blake3's internal threads (same
    digest).  The same functions hash model_signing's ``shards`` (one hasher per shard).

    Any other name raises :class:`ConfigError` naming ``path`` and the name.
    """
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake2b":
        return hashlib.blake2b()
    if algorithm == "blake3":
        b3: Any = _blake3_factory()
        if size >= _BLAKE3_MT_MIN and (os.cpu_count() or 1) >= _BLAKE3_MT_CPUS:
            return b3(max_threads=b3.AUTO)
        return b3()
    where = f"{path}: " if path else ""
    raise ConfigError(
        f"{where}unsupported whole-file digest (OMS hash_type) {str(algorithm)[:64]!r}; "
        f"supported: {', '.join(WHOLE_ALGORITHMS)}",
        hint="sign with hash type sha256 or blake3",
    )


def whole_digest_size(algorithm: str) -> int:
    """Bytes of an OMS resource digest with ``algorithm`` (64 for blake2b, else 32)."""
    return 64 if algorithm == "blake2b" else 32


def chunk_digest(algorithm: str, data: Any) -> bytes:
    """One chunk digest of ``data`` (bytes-like) with ``algorithm``."""
    return chunk_hasher(algorithm)(data).digest()


def range_count(size: int, head: int, stride: int) -> int:
    """Number of chunked digests for a file: one for the head plus one per stride."""
    if size <= head:
        return 1
    return 1 + (size - head + stride - 1) // stride


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class HashJob(NamedTuple):
    name: str  # resource name, reported in errors
    path: str  # filesystem path to open
    size: int  # expected size (from stat); a file that changes size mid-read fails
    head: int
    stride: int
    algorithm: str = SHA256_CHUNKED  # chunk digest algorithm (see chunk_hasher)
    whole: str = "sha256"  # whole-file (OMS resource) digest algorithm (see whole_hasher)


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class FileHashes(NamedTuple):
    whole: bytes  # whole-file digest (OMS resource digest) with the job's ``whole`` algorithm
    digests: tuple[bytes, ...]  # chunk digests with the job's algorithm
    whole_algorithm: str = "sha256"

    @property
    def sha256(self) -> bytes:
        """The whole-file SHA-256 (only for jobs hashed with ``whole="sha256"``)."""
        if self.whole_algorithm != "sha256":
            raise AttributeError(f"whole-file digest is {self.whole_algorithm}, not sha256")
        return self.whole


class _Buffers(threading.local):
    """Per-thread reusable read buffers (several, so reading overlaps hashing)."""

    def __init__(self) -> None:
        self.bufs: list[bytearray] = []

    def get(self, size: int, count: int = 2) -> list[bytearray]:
        if len(self.bufs) < count or len(self.bufs[0]) < size:
            self.bufs = [bytearray(size) for _ in range(count)]
        return self.bufs


_BUFFERS = _Buffers()


def _read_exact(f: object, view: memoryview, name: str) -> None:
    got = 0
    n = len(view)
    readinto = f.readinto  # type: ignore[attr-defined]
    while got < n:
        r = readinto(view[got:])
        if not r:
            raise SourceError(
                f"{name}: file shrank while being hashed ({got} of {n} bytes read)",
                hint="do not modify the model while signing or verifying it",
            )
        got += r


def _hash_read(job: HashJob, pool: cf.ThreadPoolExecutor | None, fd: int) -> FileHashes:
    """One file through ``readinto``/``pread`` buffers (where it cannot be mapped), read
    from ``fd`` (at offset 0; the caller's descriptor, so the file whose identity the
    caller checks is the one hashed)."""
    size, head, stride = job.size, job.head, job.stride
    new = chunk_hasher(job.algorithm, path=job.name)
    # chunk digest of [0, size) == whole-file digest when both use the same function
    same = (job.whole == "sha256" and job.algorithm == SHA256_CHUNKED) or (
        job.whole == "blake3" and job.algorithm == BLAKE3_CHUNKED
    )

    def one(view: memoryview) -> bytes:
        return new(view).digest()

    whole = whole_hasher(job.whole, size=size, path=job.name)
    wa = job.whole
    f = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
    with f:
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if size <= _SMALL_FILE:
            mv = memoryview(_BUFFERS.get(_SMALL_FILE)[0])[:size]
            _read_exact(f, mv, job.name)
            if f.read(1):
                raise SourceError(f"{job.name}: file grew while being hashed")
            whole.update(mv)
            full = whole.digest()
            if head >= size:
                return FileHashes(full, (full if same else one(mv),), wa)
            ranges = [mv[:head]] + [
                mv[off : min(off + stride, size)] for off in range(head, size, stride)
            ]
            return FileHashes(full, tuple(one(r) for r in ranges), wa)

        per_block = max(1, _TARGET_BLOCK // stride) if stride <= _MAX_BLOCK else 1
        block = min(per_block * stride, _MAX_BLOCK)
        bufs = _BUFFERS.get(block, 3)
        digests: list[bytes] = []

        # [0, head): sequential, fed to both hashers (the same hasher when head == size
        # and the whole-file and chunk functions agree).
        head_hasher = None if head >= size and same else new()
        pos = 0
        buf = memoryview(bufs[0])
        while pos < min(head, size):
            n = min(block, head - pos)
            view = buf[:n]
            _read_exact(f, view, job.name)
            whole.update(view)
            if head_hasher is not None:
                head_hasher.update(view)
            pos += n
        if head >= size:
            full = whole.digest()
            if f.read(1):
                raise SourceError(f"{job.name}: file grew while being hashed")
            return FileHashes(full, (full if head_hasher is None else head_hasher.digest(),), wa)
        assert head_hasher is not None
        digests.append(head_hasher.digest())

        # Data ranges, `per_block` whole strides per read (stride > block: streamed).
        if stride > _MAX_BLOCK:
            while pos < size:
                end = min(pos + stride, size)
                h = new()
                while pos < end:
                    n = min(block, end - pos)
                    view = buf[:n]
                    _read_exact(f, view, job.name)
                    whole.update(view)
                    h.update(view)
                    pos += n
                digests.append(h.digest())
        elif pool is None:
            while pos < size:
                n = min(block, size - pos)
                view = buf[:n]
                _read_exact(f, view, job.name)
                whole.update(view)
                digests.extend(one(view[o : min(o + stride, n)]) for o in range(0, n, stride))
                pos += n
        else:
            # The whole-file digest is the one sequential stream, so this thread does
            # nothing else: the pool reads block k+1 (pread, ahead) and hashes block k's
            # ranges while this thread feeds block k to the whole-file hasher.  Three
            # buffers: one being read, up to two being hashed.  Results kept in order.
            _hash_pipelined(job, f.fileno(), pool, whole, one, pos, block, digests)
            if os.pread(f.fileno(), 1, size):
                raise SourceError(f"{job.name}: file grew while being hashed")
            return FileHashes(whole.digest(), tuple(digests), wa)
        if f.read(1):
            raise SourceError(f"{job.name}: file grew while being hashed")
    return FileHashes(whole.digest(), tuple(digests), wa)


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _ranges(job: HashJob) -> list[tuple[int, int]]:
    """``(offset, length)`` of every chunk digest of ``job``, in order."""
    size, head, stride = job.size, job.head, job.stride
    if head >= size:
        return [(0, size)]
    return [(0, head)] + [(off, min(stride, size - off)) for off in range(head, size, stride)]


def _open_regular(path: str, name: str) -> int:
    """A read-only descriptor of ``path``, which must be a regular file.  O_NONBLOCK: a
    FIFO swapped in for a listed file opens at once (and is refused) instead of
    blocking the verifier until a writer appears; then blocking reads as usual."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"{name}: cannot open for hashing: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(
                f"{name}: not a regular file",
                hint="do not modify the model while signing or verifying it",
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _map_range(fd: int, start: int, length: int) -> tuple[mmap.mmap | None, int]:
    """(a read-only mapping of bytes ``[start, start + length)`` of ``fd`` advised for a
    sequential read, the file offset it starts at) or ``(None, base)`` where the file
    cannot be mapped (the caller then reads with ``pread``)."""
    base = start // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    try:
        mapped = mmap.mmap(fd, start + length - base, offset=base, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None, base
    if hasattr(mapped, "madvise"):
        with contextlib.suppress(OSError):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
    return mapped, base


def _hash_one(job: HashJob, pool: cf.ThreadPoolExecutor | None, chunks: bool = True) -> FileHashes:
    """Every digest of ``job`` from one read-only mapping of the file (no copy out of
    the page cache); ``pool``: the chunk digests are hashed there while this thread
    computes the sequential whole-file digest (a file with idle cores beside it),
    else both digests here, step by step, each step hashed twice while it is in the
    CPU cache.  Falls back to :func:`_hash_read` where the file cannot be mapped.
    ``chunks=False``: the whole-file digest only (``FileHashes.digests`` is empty).

    The file must not change while it is hashed: its identity, size and times are
    compared before and after (``SourceError``); a file cut short *while* mapped ends
    the process with SIGBUS rather than an error (never a signature or a success).
    """
    fd = _open_regular(job.path, job.name)
    try:
        before = os.fstat(fd)
        if before.st_size < job.size:
            raise SourceError(
                f"{job.name}: file shrank while being hashed ({before.st_size} of "
                f"{job.size} bytes)",
                hint="do not modify the model while signing or verifying it",
            )
        if before.st_size > job.size:
            raise SourceError(
                f"{job.name}: file grew while being hashed",
                hint="do not modify the model while signing or verifying it",
            )
        if job.size < _MAP_MIN or job.stride > _MAX_BLOCK:
            mapped = None
        else:
            try:
                mapped = mmap.mmap(fd, job.size, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                mapped = None
        if mapped is None:
            out = _hash_read(job, pool, fd) if chunks else _whole_read(job, fd)
        else:
            try:
                out = _hash_mapped(job, mapped, pool) if chunks else _whole_mapped(job, mapped)
            finally:
                with contextlib.suppress(BufferError):  # a view still alive: GC unmaps
                    mapped.close()
        if _stat_key(os.fstat(fd)) != _stat_key(before):
            raise SourceError(
                f"{job.name}: file changed while being hashed",
                hint="do not modify the model while signing or verifying it",
            )
        return out
    finally:
        os.close(fd)


def _hash_mapped(job: HashJob, mapped: mmap.mmap, pool: cf.ThreadPoolExecutor | None) -> FileHashes:
    new = chunk_hasher(job.algorithm, path=job.name)
    whole = whole_hasher(job.whole, size=job.size, path=job.name)
    ranges = _ranges(job)
    if hasattr(mapped, "madvise"):
        with contextlib.suppress(OSError):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
    mv = memoryview(mapped)
    try:
        if pool is None:
            digests = []
            step = _STEP
            for off, length in ranges:
                h = new()
                end = off + length
                for a in range(off, end, step):
                    v = mv[a : min(a + step, end)]
                    whole.update(v)
                    h.update(v)
                    v.release()
                digests.append(h.digest())
            return FileHashes(whole.digest(), tuple(digests), job.whole)

        def group(part: list[tuple[int, int]]) -> list[bytes]:
            return [new(mv[o : o + n]).digest() for o, n in part]

        per = max(1, _TARGET_BLOCK // max(1, job.stride))
        futs = [pool.submit(group, ranges[i : i + per]) for i in range(0, len(ranges), per)]
        try:
            for a in range(0, job.size, _TARGET_BLOCK):  # the one sequential stream
                v = mv[a : a + _TARGET_BLOCK]
                whole.update(v)
                v.release()
        except BaseException:
            for f in futs:
                f.cancel()
            raise
        finally:
            cf.wait(futs)  # no pool thread reads the mapping once it is closed
        digests = [d for f in futs for d in f.result()]
        return FileHashes(whole.digest(), tuple(digests), job.whole)
    finally:
        mv.release()


def _whole_mapped(job: HashJob, mapped: mmap.mmap) -> FileHashes:
    """The whole-file digest of ``job`` alone, straight from its mapping."""
    whole = whole_hasher(job.whole, size=job.size, path=job.name)
    if hasattr(mapped, "madvise"):
        with contextlib.suppress(OSError):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
    mv = memoryview(mapped)
    try:
        for a in range(0, job.size, _WHOLE_STEP):
            v = mv[a : a + _WHOLE_STEP]
            whole.update(v)
            v.release()
    finally:
        mv.release()
    return FileHashes(whole.digest(), (), job.whole)


def _whole_read(job: HashJob, fd: int) -> FileHashes:
    """The whole-file digest of ``job`` alone, through a reused buffer (``readinto``;
    files that are small or cannot be mapped), read from ``fd`` at offset 0."""
    whole = whole_hasher(job.whole, size=job.size, path=job.name)
    block = min(max(job.size, 1), _TARGET_BLOCK)
    buf = memoryview(_BUFFERS.get(max(block, _SMALL_FILE), 1)[0])
    f = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
    with f:
        pos = 0
        while pos < job.size:
            view = buf[: min(block, job.size - pos)]
            _read_exact(f, view, job.name)
            whole.update(view)
            pos += len(view)
        if f.read(1):
            raise SourceError(f"{job.name}: file grew while being hashed")
    return FileHashes(whole.digest(), (), job.whole)


def _pread_exact(fd: int, view: memoryview, offset: int, name: str) -> memoryview:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise SourceError(
                f"{name}: file shrank while being hashed",
                hint="do not modify the model while signing or verifying it",
            )
        got += n
    return view


def _hash_pipelined(
    job: HashJob,
    fd: int,
    pool: cf.ThreadPoolExecutor,
    whole: Any,
    one: Callable[[memoryview], bytes],
    start: int,
    block: int,
    digests: list[bytes],
) -> None:
    """Blocks ``[start, size)`` of ``job``: reads and range digests on ``pool``, the
    whole-file digest on the calling thread; ``digests`` gets the ranges in order."""
    bufs = _BUFFERS.get(block, 3)
    offsets = list(range(start, job.size, block))

    def read(k: int) -> cf.Future[memoryview]:
        n = min(block, job.size - offsets[k])
        view = memoryview(bufs[k % 3])[:n]
        return pool.submit(_pread_exact, fd, view, offsets[k], job.name)

    reads: dict[int, cf.Future[memoryview]] = {0: read(0)}
    hashing: deque[list[cf.Future[bytes]]] = deque()
    for k in range(len(offsets)):
        view = reads.pop(k).result()
        if len(hashing) == 2:  # block k-2's buffer is the one block k+1 will use
            digests.extend(fut.result() for fut in hashing.popleft())
        if k + 1 < len(offsets):
            reads[k + 1] = read(k + 1)
        n = len(view)
        stride = job.stride
        hashing.append(
            [pool.submit(one, view[o : min(o + stride, n)]) for o in range(0, n, stride)]
        )
        whole.update(view)
    while hashing:
        digests.extend(fut.result() for fut in hashing.popleft())


def _pread_group(job: HashJob, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Hash ``ranges`` (contiguous, ascending) of one file, each separately.

    Verification only (nothing read here is used afterwards, so there is no
    time-of-check/time-of-use to guard): the ranges are hashed straight from a read-only
    mapping of the page cache, which saves the copy a ``pread`` makes (about 0.4
    CPU-s/GB here, more than BLAKE3 itself).  The size is checked first; a file cut
    short *while* it is mapped would end the process with SIGBUS instead of an error,
    which still never reports success.  Where mapping fails, ``pread`` into a reused
    buffer.
    """
    new = chunk_hasher(job.algorithm, path=job.name)
    start = ranges[0][0]
    total = ranges[-1][0] + ranges[-1][1] - start
    fd = _open_regular(job.path, job.name)
    try:
        if os.fstat(fd).st_size != job.size:
            raise SourceError(
                f"{job.name}: file size changed while being hashed",
                hint="do not modify the model while verifying it",
            )
        if total == 0:
            return [new(b"").digest() for _ in ranges]
        mapped, base = _map_range(fd, start, total)
        if mapped is not None:
            with mapped:
                mv = memoryview(mapped)
                try:
                    return [new(mv[off - base : off - base + ln]).digest() for off, ln in ranges]
                finally:
                    mv.release()
        view = memoryview(_BUFFERS.get(max(total, _SMALL_FILE))[0])[:total]
        got = 0
        while got < total:
            n = os.preadv(fd, [view[got:]], start + got)
            if n <= 0:
                raise SourceError(f"{job.name}: file shrank while being hashed")
            got += n
        return [new(view[off - start : off - start + ln]).digest() for off, ln in ranges]
    finally:
        os.close(fd)


def _range_groups(job: HashJob) -> list[list[tuple[int, int]]]:
    size, head, stride = job.size, job.head, job.stride
    groups: list[list[tuple[int, int]]] = [[(0, head)]]
    per = max(1, _TARGET_BLOCK // stride)
    cur: list[tuple[int, int]] = []
    for off in range(head, size, stride):
        cur.append((off, min(stride, size - off)))
        if len(cur) == per:
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    return groups


def hash_chunks(jobs: Sequence[HashJob], *, workers: int | None = None) -> dict[str, FileHashes]:
    """Chunk digests only (no whole-file hash), every range group on any core.

    Used by verification of files whose chunk digests are signed: each byte is still
    checked, but a single big file is hashed by all cores.  ``FileHashes.sha256`` is
    empty.  Files with ``head == size`` (one range) fall back to :func:`hash_files`.
    """
    for j in jobs:  # unknown algorithms fail before any file is read
        chunk_hasher(j.algorithm, path=j.name)
    chunked = [j for j in jobs if j.head < j.size and j.stride <= _MAX_BLOCK]
    rest = [j for j in jobs if j not in chunked]
    out = hash_files(rest, workers=workers) if rest else {}
    if not chunked:
        return out
    ncpu = workers or os.cpu_count() or 1
    with cf.ThreadPoolExecutor(max(1, ncpu), thread_name_prefix="wg-chunk") as pool:
        futs = {
            j.name: [pool.submit(_pread_group, j, g) for g in _range_groups(j)] for j in chunked
        }
        for name, fl in futs.items():
            out[name] = FileHashes(b"", tuple(d for f in fl for d in f.result()))
    return out


def hash_files(
    jobs: Sequence[HashJob], *, workers: int | None = None, chunks: bool = True
) -> dict[str, FileHashes]:
    """Hash every job (whole-file digest + chunk digests, one read of each file) on
    every core: files in parallel; a big file whose cores would otherwise idle (fewer
    big files than cores) has its chunk digests hashed on the other cores while its
    sequential whole-file digest is computed; otherwise each file's two digests are
    computed together on one core, from the CPU cache.

    ``chunks=False`` computes the whole-file digests only (one hash per byte, files in
    parallel; ``FileHashes.digests`` is empty): what verification needs to prove the
    files when their resource digests are signed (``verify_bundle``)."""
    if not jobs:
        return {}
    for j in jobs:  # unknown algorithms fail before any file is read
        if chunks:
            chunk_hasher(j.algorithm, path=j.name)
        whole_hasher(j.whole, path=j.name)
    ncpu = workers or os.cpu_count() or 1
    big = sum(1 for j in jobs if j.size >= _SPLIT_MIN)
    split = chunks and ncpu > 1 and big < ncpu
    file_workers = max(1, min(len(jobs), ncpu, 8))
    out: dict[str, FileHashes] = {}
    order = sorted(jobs, key=lambda j: -j.size)  # big files first
    with contextlib.ExitStack() as stack:
        rpool = None
        if split:
            rpool = stack.enter_context(
                cf.ThreadPoolExecutor(max(1, ncpu), thread_name_prefix="wg-range")
            )

        def one(job: HashJob) -> FileHashes:
            return _hash_one(job, rpool if job.size >= _SPLIT_MIN else None, chunks)

        if file_workers == 1:
            for job in order:
                out[job.name] = one(job)
            return out
        fpool = stack.enter_context(
            cf.ThreadPoolExecutor(file_workers, thread_name_prefix="wg-file")
        )
        futs = {fpool.submit(one, job): job for job in order}
        for fut in cf.as_completed(futs):
            out[futs[fut].name] = fut.result()
    return out


def _hash_range(name: str, path: str, size: int, start: int, length: int, algorithm: str) -> bytes:
    """The plain ``algorithm`` digest of bytes ``[start, start + length)`` of ``path``
    (one shard of model_signing's ``shards``), from a read-only mapping of the range (no
    copy out of the page cache), else ``pread`` into a reused buffer.  A file whose
    identity, size or times change while it is hashed is refused (``SourceError``)."""
    h = whole_hasher(algorithm, path=name)
    fd = _open_regular(path, name)
    try:
        before = os.fstat(fd)
        if before.st_size != size:
            raise SourceError(
                f"{name}: file changed size while being hashed",
                hint="do not modify the model while signing or verifying it",
            )
        mapped, base = _map_range(fd, start, length) if length >= _MAP_MIN else (None, 0)
        if mapped is not None:
            with mapped:
                mv = memoryview(mapped)
                try:
                    for a in range(start - base, start - base + length, _WHOLE_STEP):
                        v = mv[a : min(a + _WHOLE_STEP, start - base + length)]
                        h.update(v)
                        v.release()
                finally:
                    mv.release()
        else:
            block = min(max(length, 1), _TARGET_BLOCK)
            buf = memoryview(_BUFFERS.get(block, 1)[0])
            pos, end = start, start + length
            while pos < end:
                view = _pread_exact(fd, buf[: min(block, end - pos)], pos, name)
                h.update(view)
                pos += len(view)
        if _stat_key(os.fstat(fd)) != _stat_key(before):
            raise SourceError(
                f"{name}: file changed while being hashed",
                hint="do not modify the model while signing or verifying it",
            )
    finally:
        os.close(fd)
    return h.digest()


def hash_ranges(
    files: Sequence[tuple[str, str, Any]], algorithm: str, *, workers: int | None = None
) -> dict[str, tuple[bytes, ...]]:
    """The plain ``algorithm`` digest of each byte range ``fd.range(k)`` of each
    ``(name, path, fd)`` (``fd`` a :class:`weightguard.manifest.FileDigests` without
    chunk digests: model_signing's ``shards``), ranges hashed in parallel."""
    whole_hasher(algorithm)  # unknown names fail before any read
    tasks = [
        (name, path, fd.size, *fd.range(k), k)
        for name, path, fd in files
        for k in range(len(fd.digests))
    ]
    out: dict[str, list[bytes]] = {name: [b""] * len(fd.digests) for name, _, fd in files}
    if not tasks:
        return {n: tuple(v) for n, v in out.items()}
    n_workers = min(len(tasks), workers or max(1, os.cpu_count() or 1))
    with cf.ThreadPoolExecutor(max_workers=n_workers) as pool:
        futs = {
            pool.submit(_hash_range, name, path, size, start, length, algorithm): (name, k)
            for name, path, size, start, length, k in tasks
        }
        for fut in cf.as_completed(futs):
            name, k = futs[fut]
            out[name][k] = fut.result()
    return {n: tuple(v) for n, v in out.items()}
