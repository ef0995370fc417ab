"""Audit sinks: append-only file, stdout/stream, S3 segments, memory.

Each sink is a byte writer under the one hash chain of
:mod:`weightguard._internal.audit.chain` (:class:`ChainedSink`): it says where its
log's chain stands and writes what the chain hands it.  The file sink shares one
chain between all threads and processes writing the same file: it holds
``fcntl.flock`` while it re-reads the file's tail and appends, so ``seq``/``prev``
always continue the last record on disk.  Reading logs back: ``readers``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any, Protocol

from weightguard._internal.audit.chain import ChainedSink, Checkpointer
from weightguard._internal.audit.checkpoint import Anchor, S3Anchor, _parse_s3
from weightguard._internal.audit.readers import (
    file_segment_name,
    is_file_segment,
    s3_segment_key,
)
from weightguard._internal.audit.record import (
    FORMAT_VERSION,
    MAX_RECORD_BYTES,
    ChainState,
    chain_record,
    digest,
    new_log_id,
    parse_record,
    torn_fragment,
    utc_now,
)
from weightguard._internal.foundation.s3 import audit_client as s3_client
from weightguard._internal.foundation.s3errors import s3_cause
from weightguard.errors import AuditError, ConfigError

SYNC_MODES = ("event", "batch", "none")

# Where each log file's chain stood when this process last wrote it: its path ->
# ((st_dev, st_ino, st_size, st_mtime_ns) after that write, log id, next seq, head,
# last record a checkpoint).  A FileSink opened later on the same file (an AuditLog per
# load) continues from here while the file is still exactly as written (same identity,
# size and mtime; else its tail is read again), instead of re-reading and re-hashing
# the last record: the check each sink already makes of its own last write.
_TAILS: dict[str, tuple[tuple[int, int, int, int], str, int, str, bool]] = {}


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Sink(Protocol):
    """Where audit records go.  ``append`` raises AuditError when it cannot write."""

    name: str

    def append(
        self, body: dict[str, Any], checkpointer: Checkpointer, *, durable: bool = True
    ) -> None: ...

    def checkpoint(self, checkpointer: Checkpointer) -> None: ...

    def flush(self) -> None: ...

    def close(self, checkpointer: Checkpointer) -> None: ...


def _write_error(name: str, exc: OSError) -> AuditError:
    return AuditError(
        f"cannot write audit log {name}: {exc.strerror or type(exc).__name__}",
        hint="make the audit sink writable (WEIGHTGUARD_AUDIT_LOG); "
        "the access is refused while it cannot be audited",
    )


class FileSink(ChainedSink):
    """Append-only JSON-lines file, shared safely by threads and processes.

    * Opened with ``O_APPEND``; each event is one ``write()`` of a whole line.
    * ``sync="event"`` (default): ``fsync`` after every event, so an event that
      returned is on disk.  ``sync="batch"``: every event is written at once (it
      survives a process crash) but ``fsync`` runs every ``batch_size`` events and at
      close, so a power loss can lose at most that many.  ``sync="none"``: no fsync.
    * Rotation: when the file reaches ``max_bytes`` it is hard-linked to
      ``<path>.<last seq>`` and atomically replaced by a new file whose first record
      (``log.rotate``) continues the chain, so the segments verify as one log.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "event",
        batch_size: int = 64,
        max_bytes: int | None = None,
        mode: int = 0o640,
        anchor: Anchor | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"unknown audit sync mode {sync!r}", hint="use event, batch or none")
        self.path = os.path.abspath(os.fspath(path))
        self.name = self.path
        self.sync = sync
        self.batch_size = max(1, batch_size)
        self.max_bytes = max_bytes
        self.mode = mode
        self.anchor = anchor
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._state: ChainState | None = None
        self._known: tuple[int, int] | None = None  # (inode, size) after our last write
        self._written: tuple[int, int, int, int] | None = None  # this session's (_TAILS)
        self._unsynced = 0

    # -- file handling ------------------------------------------------------------
    def _open(self) -> int:
        d = os.path.dirname(self.path)
        try:
            if d:
                os.makedirs(d, exist_ok=True)
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode
            )
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        return fd

    def _reset_after_fork(self) -> None:
        # The inherited descriptor shares the parent's open file description (and its
        # flock): close it without unlocking, and open our own.
        self._lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._state = None
        self._known = None
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        if os.getpid() != self._pid:
            self._reset_after_fork()
        with self._lock:
            for _ in range(16):
                if self._fd is None:
                    self._fd = self._open()
                fd = self._fd
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:
                    raise _write_error(self.path, exc) from None
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                # rotated (or removed) by someone else: reopen the current file
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                self._fd = None
                self._known = None
            else:
                raise AuditError(f"audit log {self.path} keeps being replaced; cannot lock it")
            try:
                yield fd
            finally:
                # rotation may have replaced self._fd (the old one is closed by then)
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _load_tail(self, fd: int) -> ChainState:
        """Chain state from the last record in the file (called under the lock)."""
        st = os.fstat(fd)
        if self._state is not None and self._known == (st.st_ino, st.st_size):
            return self._state
        kept = _TAILS.get(self.path)
        if kept is not None and kept[0] == _stat_key(st):
            _, log_id, next_seq, head, last_is_checkpoint = kept
            self._state = ChainState(log_id, next_seq, head, last_is_checkpoint)
            self._known = (st.st_ino, st.st_size)
            return self._state
        size = st.st_size
        if size == 0:
            state = ChainState(new_log_id())
        else:
            n = min(size, 2 * MAX_RECORD_BYTES + 2)
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_ino != st.st_ino:
                    raise AuditError(f"audit log {self.path} changed while reading its tail")
                f.seek(size - n)
                tail = f.read(n)
            if not tail.endswith(b"\n"):
                return self._repair_torn_tail(fd, size, tail, whole=n == size)
            lines = tail[:-1].rsplit(b"\n", 1)
            last = lines[-1]
            if len(lines) < 2 and n < size:
                raise AuditError(f"audit log {self.path}: last record exceeds the size limit")
            try:
                rec = parse_record(last, what=f"audit log {self.path}: last line")
                state = ChainState(
                    log_id=str(rec["log"]),
                    next_seq=int(rec["seq"]) + 1,
                    head=digest(rec),
                    last_is_checkpoint=rec.get("event") == "checkpoint",
                )
            except (AuditError, ValueError, KeyError, TypeError):
                raise AuditError(
                    f"audit log {self.path}: the last line is not an audit record",
                    hint="point WEIGHTGUARD_AUDIT_LOG at a file only weightguard writes",
                ) from None
        self._state = state
        self._known = (st.st_ino, st.st_size)
        return state

    def _repair_torn_tail(self, fd: int, size: int, tail: bytes, *, whole: bool) -> ChainState:
        """Under the lock: the file ends in an incomplete line.

        A writer killed inside its ``write()`` (``kill -9``, OOM kill, power loss)
        leaves a prefix of one canonical record line: :func:`torn_fragment` says what
        such a prefix looks like.  It was never acknowledged (``emit`` had not
        returned), so it is not a record: it is cut off (its length and SHA-256 are
        kept) and a ``log.recover`` record continuing the chain says so.  Anything
        else at the end of the file is not ours: refused, fail closed.
        """
        cut = tail.rfind(b"\n") + 1
        frag = tail[cut:]
        if (cut == 0 and not whole) or not torn_fragment(frag):
            raise AuditError(
                f"audit log {self.path} ends with an incomplete line that is not the start "
                "of an audit record",
                hint="run `weightguard audit verify` on it, keep it as evidence and "
                "start a new log file",
            )
        try:
            os.ftruncate(fd, size - len(frag))
            os.fsync(fd)
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        self._state = None
        self._known = None
        state = self._load_tail(fd)
        body = {
            "v": FORMAT_VERSION,
            "time": utc_now(),
            "event": "log.recover",
            "outcome": "error",
            "reason": "the previous writer stopped in the middle of a record (killed or "
            "crashed); its incomplete last line was removed",
            "extra": {
                "torn_bytes": len(frag),
                "torn_sha256": hashlib.sha256(frag).hexdigest(),
            },
        }
        self.commit(state, [body], None, force=True)
        self._state = state
        return state

    # -- the chain's byte writer ------------------------------------------------------
    @contextlib.contextmanager
    def _session(self, checkpointer: Checkpointer | None) -> Iterator[ChainState]:
        with self._locked() as fd:
            state = self._load_tail(fd)
            if (
                checkpointer is not None
                and self.max_bytes
                and self._known
                and self._known[1] >= self.max_bytes
            ):
                self._rotate(fd, state, checkpointer)
            self._written = None
            yield state
            if self._written is not None and self._state is state:
                _TAILS[self.path] = (
                    self._written,
                    state.log_id,
                    state.next_seq,
                    state.head,
                    state.last_is_checkpoint,
                )

    def _write(self, data: bytes, *, records: int, durable: bool, force: bool) -> None:
        """One ``write()`` of whole lines.  ``durable=False`` (a step of a load, not its
        decision): written at once like every event (a process crash keeps it), but
        with ``sync="event"`` its fsync is left to the next durable event, which makes
        it durable too (one fsync covers every earlier write of the file)."""
        fd = self._fd
        assert fd is not None  # inside a session
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.EIO, "short write")
            self._unsynced += 1
            if (
                (self.sync == "event" and durable)
                or force
                or (self.sync == "batch" and self._unsynced >= self.batch_size)
            ):
                os.fsync(fd)
                self._unsynced = 0
        except OSError as exc:
            self._state = None
            self._known = None
            raise _write_error(self.path, exc) from None
        st = os.fstat(fd)
        self._known = (st.st_ino, st.st_size)
        self._written = _stat_key(st)

    def _clear_killed_rotation(self, fd: int, d: str, *, keep: str) -> None:
        """Under the lock: remove what a rotator killed mid-way left behind.

        No rotation is in progress while we hold the current file's lock, so every
        ``.<name>.rotate.*`` temp file is a leftover, and a segment name that is a
        hard link to the current file is a link made by a rotator killed before its
        replace (the file is not a closed segment: it is still being written).
        """
        base = os.path.basename(self.path)
        try:
            names = os.listdir(d)
            st = os.fstat(fd)
        except OSError:
            return
        for name in names:
            full = os.path.join(d, name)
            with contextlib.suppress(OSError):
                if name.startswith(f".{base}.rotate."):
                    os.unlink(full)
                elif is_file_segment(base, name) and full != keep:
                    other = os.stat(full)
                    if (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev):
                        os.unlink(full)

    def _rotate(self, fd: int, state: ChainState, checkpointer: Checkpointer) -> None:
        """Under the lock: close this segment, start the next one continuing the chain."""
        if checkpointer.can_sign(state):
            self.commit(state, [], checkpointer, checkpoint=True)
        else:
            os.fsync(fd)
        segment = file_segment_name(self.path, state.next_seq - 1)
        d = os.path.dirname(self.path)
        self._clear_killed_rotation(fd, d, keep=segment)
        # unique: a crashed rotator's leftover must not block the next one (O_EXCL)
        tmp = os.path.join(d, f".{os.path.basename(self.path)}.rotate.{uuid.uuid4().hex}")
        body = {
            "v": FORMAT_VERSION,
            "time": utc_now(),
            "event": "log.rotate",
            "outcome": "ok",
            "extra": {"previous_segment": os.path.basename(segment)},
        }
        line = chain_record(body, state)
        nfd = -1
        linked = False
        try:
            nfd = os.open(
                tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode
            )
            # Lock the new segment before it gets the log's name: a writer that opens
            # the name after the replace must wait for us, or it would read our
            # log.rotate line as the tail and write the seq we are about to write.
            fcntl.flock(nfd, fcntl.LOCK_EX)
            os.write(nfd, line)
            os.fsync(nfd)
            try:
                os.link(self.path, segment)
                linked = True
            except FileExistsError:
                # left by a rotator killed after linking: the same file is fine
                if not os.path.samefile(self.path, segment):
                    raise
            os.replace(tmp, self.path)
            linked = False  # the segment is the old file's name now, for good
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            if nfd >= 0:
                os.close(nfd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if linked:  # the current file must not also stay named as a closed segment
                with contextlib.suppress(OSError):
                    os.unlink(segment)
            self._state = None
            raise _write_error(self.path, exc) from None
        # we held the old file's lock until the new one was locked (and named)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self._fd = nfd
        st = os.fstat(nfd)
        self._known = (st.st_ino, st.st_size)
        self._state = state

    def flush(self) -> None:
        if self._fd is not None and self._unsynced and os.getpid() == self._pid:
            with self._lock:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    raise _write_error(self.path, exc) from None
                self._unsynced = 0

    def close(self, checkpointer: Checkpointer) -> None:
        if os.getpid() != self._pid:
            return
        try:
            if self._state is not None:
                self.checkpoint(checkpointer)
            self.flush()
        finally:
            with self._lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def __repr__(self) -> str:
        return f"FileSink({self.path!r}, sync={self.sync!r})"


class StreamSink(ChainedSink):
    """JSON lines to a text stream (stdout by default: Kubernetes log collection).

    One chain per process (its own log id); the verifier separates interleaved logs
    of several pods by log id.
    """

    def __init__(self, stream: IO[str] | None = None, *, name: str = "-") -> None:
        self._stream = stream
        self.name = name
        self._lock = threading.Lock()
        self._state = ChainState(new_log_id())
        self._pid = os.getpid()

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    @contextlib.contextmanager
    def _session(self, checkpointer: Checkpointer | None) -> Iterator[ChainState]:
        with self._lock:
            if os.getpid() != self._pid:  # a forked child writes its own log
                self._state = ChainState(new_log_id())
                self._pid = os.getpid()
            yield self._state

    def _write(self, data: bytes, *, records: int, durable: bool, force: bool) -> None:
        try:
            self.stream.write(data.decode("ascii"))
            self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed stream
            err = exc if isinstance(exc, OSError) else OSError(errno.EBADF, "stream closed")
            raise _write_error(self.name, err) from None

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def close(self, checkpointer: Checkpointer) -> None:
        if os.getpid() == self._pid:
            self.checkpoint(checkpointer)
        self.flush()

    def __repr__(self) -> str:
        return f"StreamSink({self.name!r})"


class MemorySink(ChainedSink):
    """Keeps records in a list (tests, and in-process inspection)."""

    def __init__(self) -> None:
        self.name = "memory"
        self.records: list[dict[str, Any]] = []
        self.lines: list[bytes] = []
        self._state = ChainState(new_log_id())
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _session(self, checkpointer: Checkpointer | None) -> Iterator[ChainState]:
        with self._lock:
            yield self._state

    def _write(self, data: bytes, *, records: int, durable: bool, force: bool) -> None:
        for line in data.splitlines(keepends=True):
            self.lines.append(line)
            self.records.append(json.loads(line))

    def flush(self) -> None:
        return None

    def close(self, checkpointer: Checkpointer) -> None:
        self.checkpoint(checkpointer)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if name is None or r.get("event") == name]


class S3Sink(ChainedSink):
    """Segments ``<prefix>/<log id>/segments/<first>-<last>.jsonl`` under Object Lock.

    Each process writes its own log id.  ``sync="event"`` (default) uploads a segment
    per event, durable or not (an event buffered in memory would not survive a crash
    of the process), so an event that returned is stored; ``sync="batch"`` buffers up
    to ``batch_size`` events (or ``interval_s`` seconds) per segment.  Segments and
    checkpoints are written with Object Lock retention, and checkpoints are anchored
    under ``<prefix>/<log id>/checkpoints/`` in the same bucket unless another anchor
    is given.
    """

    def __init__(
        self,
        uri: str,
        *,
        client: Any = None,
        sync: str = "event",
        batch_size: int = 256,
        interval_s: float = 5.0,
        retention_days: int = 365,
        lock_mode: str = "GOVERNANCE",
        anchor: Anchor | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"unknown audit sync mode {sync!r}", hint="use event, batch or none")
        self.name = uri
        self.bucket, self.prefix = _parse_s3(uri)
        self._client = client
        self.sync = sync
        self.batch_size = max(1, batch_size)
        self.interval_s = interval_s
        self.retention_days = retention_days
        self.lock_mode = lock_mode
        self._lock = threading.Lock()
        self._state = ChainState(new_log_id())
        self._pid = os.getpid()
        self._buf: list[bytes] = []
        self._buf_first = 0
        self._buf_since = time.monotonic()
        self.anchor: Anchor | None = anchor or S3Anchor(
            uri, client=client, retention_days=retention_days, mode=lock_mode
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    @property
    def log_id(self) -> str:
        return self._state.log_id

    def _upload(self) -> None:
        """Under the lock: the buffered records as one segment (it ends at the head)."""
        if not self._buf:
            return
        first, last = self._buf_first, self._state.next_seq - 1
        body = b"".join(self._buf)
        until = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=self.retention_days)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=s3_segment_key(self.prefix, self._state.log_id, first, last),
                Body=body,
                ContentType="application/x-ndjson",
                ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324
                ObjectLockMode=self.lock_mode,
                ObjectLockRetainUntilDate=until,
            )
        except Exception as exc:
            raise AuditError(
                f"cannot write audit segment to {self.name} ({s3_cause(exc)})",
                hint="check the bucket exists with Object Lock enabled and the S3 "
                "credentials; the access is refused while it cannot be audited",
            ) from None
        self._buf = []
        self._buf_since = time.monotonic()

    @contextlib.contextmanager
    def _session(self, checkpointer: Checkpointer | None) -> Iterator[ChainState]:
        with self._lock:
            if os.getpid() != self._pid:  # a forked child writes its own log
                self._state = ChainState(new_log_id())
                self._buf = []
                self._pid = os.getpid()
            yield self._state

    def _write(self, data: bytes, *, records: int, durable: bool, force: bool) -> None:
        before = list(self._buf)
        if not self._buf:
            self._buf_first = self._state.next_seq - records
        self._buf.append(data)
        if (
            self.sync == "event"
            or force
            or len(self._buf) >= self.batch_size
            or time.monotonic() - self._buf_since >= self.interval_s
        ):
            try:
                self._upload()
            except BaseException:
                self._buf = before  # not stored: the chain is undone too
                raise

    def checkpoint(self, checkpointer: Checkpointer) -> None:
        """A checkpoint when there is something to sign; the buffer is uploaded anyway."""
        super().checkpoint(checkpointer)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._upload()

    def close(self, checkpointer: Checkpointer) -> None:
        if os.getpid() != self._pid:
            return
        self.checkpoint(checkpointer)

    def __repr__(self) -> str:
        return f"S3Sink({self.name!r})"
