"""The one-pass verify + decrypt pipeline.

N worker threads (``hashlib``/``blake3`` and AES-GCM release the GIL) take records of the
files to load.  Each record's bytes are read exactly once from its source into a reused
buffer, hashed with the chunk algorithm named in the signed record
(:func:`weightguard._internal.signing.hashing.chunk_hasher`) and compared in constant time with
the signed digest BEFORE they are used, then
AEAD-decrypted (or, for plain safetensors, taken as they are) into the copier's
destination.  The first failure stops every worker; the caller then discards what was
written (see :mod:`weightguard._internal.load.copiers`).

A file signed without chunk digests (model_signing's whole-file or shard digests) has a
:class:`~weightguard._internal.load.stream_digests.StreamCheck` (``FileJob.stream``):
its records are read, decrypted and placed in parallel like the others, and each hands
its source bytes to the in-order hasher, from the destination when the copier keeps
them there (a plain file on the CPU), else from a held read buffer that goes back to a
bounded pool once hashed.  Held buffers are handed out in dispatch order, and each
file's records are dispatched in file order (files take turns), so the piece a hasher
waits for was dispatched before any later piece of its file: it never waits for a
buffer.  The load succeeds only when every such digest matched.
"""

from __future__ import annotations

import concurrent.futures as cf
import hmac
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from weightguard._internal.foundation.memory import wipe
from weightguard._internal.load.copiers import Copier
from weightguard._internal.load.records import Record
from weightguard._internal.load.sources import Source
from weightguard._internal.signing.hashing import SHA256_CHUNKED, chunk_hasher
from weightguard.errors import IntegrityError

if TYPE_CHECKING:  # made by model_files for streamed files only (model_signing's digests)
    from weightguard._internal.load.stream_digests import StreamCheck

__all__ = ["FileJob", "Record", "RecordCipher", "digest_matches", "run_pipeline"]


class RecordCipher(Protocol):
    def decrypt_record_into(self, index: int, ciphertext: memoryview, out: memoryview) -> None: ...


# eq=False: working state, compared by identity (one generated method less to define on
# the loader's import path, issue 25)
@dataclass(eq=False)
class FileJob:
    name: str  # shown in errors and audit events
    source: Source
    records: list[Record]
    segments: list[int]  # destination segment sizes
    cipher: RecordCipher | None = None  # None: plaintext records
    bytes_read: int = field(default=0)
    algorithm: str = SHA256_CHUNKED  # chunk digest algorithm of the signed record
    stream: StreamCheck | None = None  # whole-file / shard digests, checked in file order


def digest_matches(
    data: memoryview | bytes | bytearray,
    expected: bytes,
    algorithm: str = SHA256_CHUNKED,
    *,
    path: str | None = None,
) -> bool:
    """Constant-time check of ``data``'s chunk digest (``algorithm``) against ``expected``."""
    got = chunk_hasher(algorithm, path=path)(data).digest()
    return hmac.compare_digest(got, expected)


def _check_tag(job: FileJob, rec: Record, data: memoryview, tags: Any) -> None:
    """The GCM tag of a ciphertext record, without decrypting it (device decryption).

    Checked on EVERY record the device decrypts, signed or not: a signed digest covers
    whatever ciphertext was signed, and CTR is malleable (an edit made between encrypt
    and sign flips chosen plaintext bits); only the tag ties the bytes to the key.
    """
    assert job.cipher is not None
    if not tags.matches(job.cipher, rec.index, data):
        raise IntegrityError(
            f"data record {rec.index} failed authentication (modified, reordered, "
            "duplicated, or taken from another artifact)",
            path=job.name,
            chunk=rec.index,
        )


def _check(job: FileJob, rec: Record, data: memoryview) -> None:
    if rec.digest is None:
        return
    if not digest_matches(data, rec.digest, job.algorithm, path=job.name):
        raise IntegrityError(
            "chunk digest does not match the signed digest", path=job.name, chunk=rec.index
        )


class _Stop(Exception):
    pass


BeforeRecord = Callable[[FileJob, Record], None]
#: ``progress(done, total)``: source bytes read and checked so far, of ``total``.
Progress = Callable[[int, int], None]
# Bytes of held read buffers (streamed digests) at most, beyond two buffers.
_HELD_BYTES = 256 * 1024 * 1024


def _dispatch_order(jobs: Sequence[FileJob]) -> list[tuple[FileJob, Record]]:
    """Every record to process, in the order workers take them.

    Streamed files' records take turns, each file's in file order (what keeps the held
    buffers deadlock-free): every file's hasher has bytes to hash from the start.
    """
    items: list[tuple[FileJob, Record]] = [
        (j, r) for j in jobs if j.stream is None for r in j.records
    ]
    lanes = [[(j, r) for r in j.records] for j in jobs if j.stream is not None]
    items += [x for turn in itertools.zip_longest(*lanes) for x in turn if x is not None]
    return items


def run_pipeline(
    jobs: Sequence[FileJob],
    copier: Copier,
    *,
    workers: int,
    before_record: BeforeRecord | None = None,
    progress: Progress | None = None,
) -> None:
    """Process every record of ``jobs`` into ``copier`` (already allocated).

    ``progress(done, total)`` is called with ``done == 0`` before the first record and
    after each record (from the worker threads, one at a time, ``done`` increasing).

    Raises the first failure (``BaseException`` included: a ``KeyboardInterrupt``
    in the caller's thread or injected in a worker stops all workers first).
    """
    for j in jobs:  # each streamed file's head, read and parsed when it was opened
        if j.stream is not None:
            j.stream.begin()
    items = _dispatch_order(jobs)
    if items:
        _Run(jobs, items, copier, workers, before_record, progress).run()
    for j in jobs:  # every whole-file / shard digest was hashed whole and matched
        if j.stream is not None:
            j.stream.finish()


class _Run:
    """One :func:`run_pipeline` call: the state its worker threads share (the next
    record, held read buffers, errors, progress), with one method per stage.

    Held read buffers hold bytes as stored in the file (ciphertext, or a plain file's
    bytes), never decrypted plaintext.
    """

    __slots__ = (
        "before_record",
        "buffers",
        "cond",
        "copier",
        "done",
        "errors",
        "held_all",
        "held_free",
        "held_limit",
        "held_size",
        "items",
        "jobs",
        "lock",
        "max_ct",
        "n",
        "next_item",
        "progress",
        "stop",
        "tags",
        "total",
    )

    def __init__(
        self,
        jobs: Sequence[FileJob],
        items: list[tuple[FileJob, Record]],
        copier: Copier,
        workers: int,
        before_record: BeforeRecord | None,
        progress: Progress | None,
    ) -> None:
        self.jobs = jobs
        self.items = items
        self.copier = copier
        self.before_record = before_record
        self.progress = progress
        self.max_ct = max(r.src_len for _, r in items)
        self.total = sum(r.src_len for _, r in items)
        self.done = 0
        self.n = max(1, min(workers, len(items)))
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.next_item = 0
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.buffers: list[bytearray] = []
        self.tags: Any = None  # GCM tags of device-decrypted records (H once per cipher)
        self.held_size = max((r.src_len for j, r in items if self.needs_held(j, r)), default=0)
        self.held_limit = max(2, min(2 * self.n + 2, _HELD_BYTES // max(1, self.held_size)))
        self.held_all: list[bytearray] = []
        self.held_free: list[bytearray] = []

    def run(self) -> None:
        """Run the workers to the end or the first failure, then raise that failure."""
        if self.progress is not None:
            self.progress(0, self.total)
        if self.copier.decrypts and any(j.cipher is not None for j in self.jobs):
            from weightguard._internal.devices.gcm_tag import TagChecker

            self.tags = TagChecker()
        pool = cf.ThreadPoolExecutor(max_workers=self.n, thread_name_prefix="wg-load")
        futures = [pool.submit(self.work, w) for w in range(self.n)]
        try:
            pending = set(futures)
            while pending:  # short waits so a KeyboardInterrupt reaches this thread
                _, pending = cf.wait(pending, timeout=0.1)
        except BaseException:
            self.halt()
            cf.wait(futures)
            raise
        finally:
            self.stop.set()
            pool.shutdown(wait=True)
            self.clean_up()
        if self.errors:
            # Prefer the most telling error: integrity over the rest.
            for e in self.errors:
                if isinstance(e, IntegrityError):
                    raise e
            raise self.errors[0]

    def clean_up(self) -> None:
        """Wipe the read buffers, forget the tags and held buffers (the workers ended)."""
        for b in self.buffers:
            wipe(b)
        if self.tags is not None:
            self.tags.clear()
        if self.errors:
            self.halt()
        self.held_all.clear()
        self.held_free.clear()

    def needs_held(self, job: FileJob, rec: Record) -> bool:
        """Whether a record's source bytes go through a held buffer to the hasher."""
        return job.stream is not None and (
            rec.hash_only or job.cipher is not None or not self.copier.keeps_output
        )

    def halt(self) -> None:
        """Stop taking records, and stop every hasher at its next piece."""
        self.stop.set()
        for j in self.jobs:
            if j.stream is not None:
                j.stream.clear()

    def give_back(self, buf: bytearray) -> None:
        with self.cond:
            self.held_free.append(buf)
            self.cond.notify()

    def take(self) -> tuple[FileJob, Record, bytearray | None] | None:
        """The next record (with its held buffer when it needs one); None at the end."""
        items, held_free, held_all = self.items, self.held_free, self.held_all
        with self.cond:
            while True:
                i = self.next_item
                if i >= len(items) or self.stop.is_set():
                    return None
                job, rec = items[i]
                held: bytearray | None = None
                if self.needs_held(job, rec):
                    if held_free:
                        held = held_free.pop()
                    elif len(held_all) < self.held_limit:
                        held = bytearray(self.held_size)
                        held_all.append(held)
                    else:  # every buffer waits for a piece an earlier record brings
                        self.cond.wait(0.05)
                        continue
                self.next_item = i + 1
                return job, rec, held

    def work(self, worker: int) -> None:
        """One worker thread: take records until none is left or one failed."""
        copier, before_record, progress = self.copier, self.before_record, self.progress
        host_ct = not copier.decrypts and any(
            j.cipher is not None and j.stream is None for j in self.jobs
        )
        buf = bytearray(self.max_ct) if host_ct else bytearray()
        with self.lock:
            self.buffers.append(buf)
        mv = memoryview(buf)
        try:
            with copier.worker_context():
                while True:
                    item = self.take()
                    if item is None:
                        return
                    job, rec, held = item
                    if before_record is not None:
                        before_record(job, rec)
                    if job.stream is not None:
                        self.one_streamed(worker, job, rec, held)
                    else:
                        self.one(worker, job, rec, mv)
                    if progress is not None:
                        with self.lock:
                            self.done += rec.src_len
                            progress(self.done, self.total)
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)
            self.halt()

    def one(self, worker: int, job: FileJob, rec: Record, mv: memoryview) -> None:
        """A record checked by its own signed digest: read, check, decrypt, place."""
        copier = self.copier
        if job.cipher is not None and copier.decrypts:
            # Ciphertext straight into the staging slot; checked before it moves on.
            out = copier.acquire(worker, rec, ciphertext=True)
            try:
                job.source.read_into(rec.src_off, out)
                _check(job, rec, out)  # the signed digest (when signed), then the tag
                _check_tag(job, rec, out, self.tags)
            except BaseException:
                copier.abandon(worker, out)
                raise
            copier.commit(worker, rec, out, job.cipher)
        elif job.cipher is not None:
            ct = mv[: rec.src_len]
            job.source.read_into(rec.src_off, ct)
            _check(job, rec, ct)
            out = copier.acquire(worker, rec)
            try:
                job.cipher.decrypt_record_into(rec.index, ct, out)
            except BaseException:
                copier.abandon(worker, out)
                raise
            copier.commit(worker, rec, out)
        else:
            out = copier.acquire(worker, rec)
            try:
                job.source.read_into(rec.src_off, out)
                _check(job, rec, out)
            except BaseException:
                copier.abandon(worker, out)
                raise
            copier.commit(worker, rec, out)
        job.bytes_read += rec.src_len  # approximate under races; for stats only

    def one_streamed(self, worker: int, job: FileJob, rec: Record, held: bytearray | None) -> None:
        """A record of a file checked by whole-file / shard digests: used like any
        other, and its source bytes handed to the file's in-order hasher."""
        assert job.stream is not None
        copier = self.copier
        if held is None:  # plain, into memory that keeps it: hashed from there
            out = copier.acquire(worker, rec)
            try:
                job.source.read_into(rec.src_off, out)
            except BaseException:
                copier.abandon(worker, out)
                raise
            copier.commit(worker, rec, out)
            job.stream.feed(rec.src_off, out)
            job.bytes_read += rec.src_len
            return
        src = memoryview(held)[: rec.src_len]
        try:
            job.source.read_into(rec.src_off, src)
            if not rec.hash_only:
                self.place(worker, job, rec, src)
        except BaseException:
            self.give_back(held)
            raise
        job.stream.feed(rec.src_off, src, lambda: self.give_back(held))
        job.bytes_read += rec.src_len

    def place(self, worker: int, job: FileJob, rec: Record, src: memoryview) -> None:
        """Source bytes ``src`` of a record (already read) into the copier."""
        copier = self.copier
        if job.cipher is not None and copier.decrypts:
            _check_tag(job, rec, src, self.tags)
            out = copier.acquire(worker, rec, ciphertext=True)
            try:
                out[:] = src
            except BaseException:
                copier.abandon(worker, out)
                raise
            copier.commit(worker, rec, out, job.cipher)
            return
        out = copier.acquire(worker, rec)
        try:
            if job.cipher is not None:
                job.cipher.decrypt_record_into(rec.index, src, out)
            else:
                out[:] = src
        except BaseException:
            copier.abandon(worker, out)
            raise
        copier.commit(worker, rec, out)
