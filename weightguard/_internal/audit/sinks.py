"""Audit sinks: append-only file, stdout/stream, S3 segments, memory.

Every sink keeps its own hash chain: it turns a record *body* (what happened) into a
record (body + ``log``, ``seq``, ``prev``), appends it, and writes a signed checkpoint
when one is due.  The file sink shares one chain between all threads and processes
writing the same file: it holds ``fcntl.flock`` while it re-reads the file's tail
and appends, so ``seq``/``prev`` always continue the last record on disk.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from weightguard._internal.audit.checkpoint import (
    Anchor,
    CheckpointSigner,
    S3Anchor,
    checkpoint_payload,
    s3_client,
)
from weightguard._internal.audit.record import (
    FORMAT_VERSION,
    GENESIS,
    MAX_RECORD_BYTES,
    canonical,
    digest,
    parse_record,
    torn_fragment,
    utc_now,
)
from weightguard._internal.foundation.s3errors import s3_cause
from weightguard.errors import AuditError, ConfigError

SYNC_MODES = ("event", "batch", "none")
SEGMENT_RE = re.compile(r"\.(\d{12})$")


def new_log_id() -> str:
    return str(uuid.uuid4())


@dataclass
class ChainState:
    log_id: str
    next_seq: int = 0
    head: str = GENESIS
    last_is_checkpoint: bool = False


class Checkpointer:
    """Decides when a checkpoint is due, signs it and anchors it."""

    def __init__(
        self,
        signer: CheckpointSigner | None,
        anchor: Anchor | None,
        *,
        every: int = 1000,
        interval_s: float = 300.0,
    ) -> None:
        if every < 2:
            raise ConfigError("checkpoint interval must be at least 2 records")
        self.signer = signer
        self.anchor = anchor
        self.every = every
        self.interval_s = interval_s
        self._last = time.monotonic()

    def due(self, state: ChainState) -> bool:
        if self.signer is None or state.last_is_checkpoint or state.next_seq == 0:
            return False
        if state.next_seq % self.every == 0:
            return True
        return time.monotonic() - self._last >= self.interval_s

    def make(self, state: ChainState, anchor: Anchor | None = None) -> tuple[dict[str, Any], Any]:
        """A signed checkpoint body for the current head, and the anchor to publish to."""
        assert self.signer is not None
        cp = {"log": state.log_id, "size": state.next_seq, "head": state.head, "time": utc_now()}
        sig = self.signer.sign(checkpoint_payload(cp))
        self._last = time.monotonic()
        body = {
            "v": FORMAT_VERSION,
            "time": cp["time"],
            "event": "checkpoint",
            "outcome": "ok",
            "checkpoint": cp,
            "sig": sig,
        }
        return body, anchor or self.anchor


def chain_record(body: dict[str, Any], state: ChainState) -> bytes:
    """Append ``body`` to ``state``'s chain; return the canonical line (with newline)."""
    rec = dict(body)
    rec["log"] = state.log_id
    rec["seq"] = state.next_seq
    rec["prev"] = state.head
    line = canonical(rec)
    if len(line) > MAX_RECORD_BYTES:
        raise AuditError(
            f"audit record for event {body.get('event')!s:.40} is {len(line)} bytes "
            f"(limit {MAX_RECORD_BYTES})",
            hint="pass fewer or shorter object/extra fields",
        )
    state.head = "sha256:" + hashlib.sha256(line).hexdigest()
    state.next_seq += 1
    state.last_is_checkpoint = body.get("event") == "checkpoint"
    return line + b"\n"


def publish(anchor: Any, body: dict[str, Any]) -> None:
    if anchor is not None:
        anchor.publish({"checkpoint": body["checkpoint"], "sig": body["sig"]})


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


class FileSink:
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
        snapshot = (state.next_seq, state.head, state.last_is_checkpoint)
        try:
            self._write(fd, chain_record(body, state), force_sync=True)
        except BaseException:
            state.next_seq, state.head, state.last_is_checkpoint = snapshot
            raise
        self._state = state
        return state

    def _write(
        self, fd: int, data: bytes, force_sync: bool = False, *, durable: bool = True
    ) -> None:
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.EIO, "short write")
            self._unsynced += 1
            if (
                (self.sync == "event" and durable)
                or force_sync
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

    # -- Sink API -----------------------------------------------------------------
    def append(
        self, body: dict[str, Any], checkpointer: Checkpointer, *, durable: bool = True
    ) -> None:
        """Append one event.  ``durable=False`` (a step of a load, not its decision):
        written at once like every event (a process crash keeps it), but with
        ``sync="event"`` its fsync is left to the next durable event, which makes it
        durable too (one fsync covers every earlier write of the file)."""
        with self._locked() as fd:
            state = self._load_tail(fd)
            if self.max_bytes and self._known and self._known[1] >= self.max_bytes:
                fd = self._rotate(fd, state, checkpointer)
            snapshot = (state.next_seq, state.head, state.last_is_checkpoint)
            try:
                data = chain_record(body, state)
                to_publish = None
                if checkpointer.due(state):
                    cp_body, to_publish = checkpointer.make(state, self.anchor)
                    data += chain_record(cp_body, state)
                self._write(fd, data, force_sync=to_publish is not None, durable=durable)
            except BaseException:
                if self._state is state:
                    state.next_seq, state.head, state.last_is_checkpoint = snapshot
                raise
            if to_publish is not None:
                publish(to_publish, cp_body)

    def checkpoint(self, checkpointer: Checkpointer) -> None:
        if checkpointer.signer is None:
            return
        with self._locked() as fd:
            state = self._load_tail(fd)
            if state.next_seq == 0 or state.last_is_checkpoint:
                return
            cp_body, anchor = checkpointer.make(state, self.anchor)
            data = chain_record(cp_body, state)
            self._write(fd, data, force_sync=True)
            publish(anchor, cp_body)

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
                elif (
                    name.startswith(base + ".")
                    and SEGMENT_RE.search(name[len(base) :])
                    and full != keep
                ):
                    other = os.stat(full)
                    if (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev):
                        os.unlink(full)

    def _rotate(self, fd: int, state: ChainState, checkpointer: Checkpointer) -> int:
        """Under the lock: close this segment, start the next one continuing the chain."""
        if checkpointer.signer is not None and not state.last_is_checkpoint:
            cp_body, anchor = checkpointer.make(state, self.anchor)
            self._write(fd, chain_record(cp_body, state), force_sync=True)
            publish(anchor, cp_body)
        else:
            os.fsync(fd)
        segment = f"{self.path}.{state.next_seq - 1:012d}"
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
        return nfd

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


class StreamSink:
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

    def _emit_lines(self, data: bytes) -> None:
        try:
            self.stream.write(data.decode("ascii"))
            self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed stream
            err = exc if isinstance(exc, OSError) else OSError(errno.EBADF, "stream closed")
            raise _write_error(self.name, err) from None

    def append(
        self, body: dict[str, Any], checkpointer: Checkpointer, *, durable: bool = True
    ) -> None:
        with self._lock:
            if os.getpid() != self._pid:
                self._state = ChainState(new_log_id())
                self._pid = os.getpid()
            state = self._state
            data = chain_record(body, state)
            to_publish = None
            if checkpointer.due(state):
                cp_body, to_publish = checkpointer.make(state)
                data += chain_record(cp_body, state)
            self._emit_lines(data)
            if to_publish is not None:
                publish(to_publish, cp_body)

    def checkpoint(self, checkpointer: Checkpointer) -> None:
        with self._lock:
            st = self._state
            if checkpointer.signer is None or st.next_seq == 0 or st.last_is_checkpoint:
                return
            cp_body, anchor = checkpointer.make(st)
            self._emit_lines(chain_record(cp_body, st))
            publish(anchor, cp_body)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def close(self, checkpointer: Checkpointer) -> None:
        if os.getpid() == self._pid:
            self.checkpoint(checkpointer)
        self.flush()

    def __repr__(self) -> str:
        return f"StreamSink({self.name!r})"


class MemorySink:
    """Keeps records in a list (tests, and in-process inspection)."""

    def __init__(self) -> None:
        self.name = "memory"
        self.records: list[dict[str, Any]] = []
        self.lines: list[bytes] = []
        self._state = ChainState(new_log_id())
        self._lock = threading.Lock()

    def append(
        self, body: dict[str, Any], checkpointer: Checkpointer, *, durable: bool = True
    ) -> None:
        with self._lock:
            lines = [chain_record(body, self._state)]
            if checkpointer.due(self._state):
                cp_body, anchor = checkpointer.make(self._state)
                lines.append(chain_record(cp_body, self._state))
                publish(anchor, cp_body)
            for line in lines:
                self.lines.append(line)
                self.records.append(json.loads(line))

    def checkpoint(self, checkpointer: Checkpointer) -> None:
        with self._lock:
            st = self._state
            if checkpointer.signer is None or st.next_seq == 0 or st.last_is_checkpoint:
                return
            cp_body, anchor = checkpointer.make(st)
            line = chain_record(cp_body, st)
            self.lines.append(line)
            self.records.append(json.loads(line))
            publish(anchor, cp_body)

    def flush(self) -> None:
        return None

    def close(self, checkpointer: Checkpointer) -> None:
        self.checkpoint(checkpointer)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if name is None or r.get("event") == name]


class S3Sink:
    """Segments ``<prefix>/<log id>/segments/<first>-<last>.jsonl`` under Object Lock.

    Each process writes its own log id.  ``sync="event"`` (default) uploads a segment
    per event, so an event that returned is stored; ``sync="batch"`` buffers up to
    ``batch_size`` events (or ``interval_s`` seconds) per segment.  Segments and
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
        from weightguard._internal.audit.checkpoint import _parse_s3

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
        self.anchor: Anchor = anchor or S3Anchor(
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

    def _segment_key(self, first: int, last: int) -> str:
        base = f"{self.prefix}/" if self.prefix else ""
        return f"{base}{self._state.log_id}/segments/{first:012d}-{last:012d}.jsonl"

    def _upload(self) -> None:
        if not self._buf:
            return
        first = self._buf_first
        last = first + len(self._buf) - 1
        body = b"".join(self._buf)
        until = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=self.retention_days)
        import base64

        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._segment_key(first, last),
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

    def _add(self, data: bytes) -> None:
        if not self._buf:
            self._buf_first = self._state.next_seq - data.count(b"\n")
        self._buf.append(data)

    def append(
        self, body: dict[str, Any], checkpointer: Checkpointer, *, durable: bool = True
    ) -> None:
        # Every event is uploaded as it comes with sync="event", durable or not: an
        # event buffered in memory would not survive a crash of the process.
        with self._lock:
            if os.getpid() != self._pid:
                self._state = ChainState(new_log_id())
                self._buf = []
                self._pid = os.getpid()
            state = self._state
            snapshot = (state.next_seq, state.head, state.last_is_checkpoint, list(self._buf))
            try:
                self._add(chain_record(body, state))
                to_publish = None
                if checkpointer.due(state):
                    cp_body, to_publish = checkpointer.make(state, self.anchor)
                    self._add(chain_record(cp_body, state))
                if (
                    self.sync == "event"
                    or to_publish is not None
                    or len(self._buf) >= self.batch_size
                    or time.monotonic() - self._buf_since >= self.interval_s
                ):
                    self._upload()
            except BaseException:
                state.next_seq, state.head, state.last_is_checkpoint, self._buf = snapshot
                raise
            if to_publish is not None:
                publish(to_publish, cp_body)

    def checkpoint(self, checkpointer: Checkpointer) -> None:
        with self._lock:
            st = self._state
            if checkpointer.signer is None or st.next_seq == 0 or st.last_is_checkpoint:
                self._upload()
                return
            cp_body, anchor = checkpointer.make(st, self.anchor)
            self._add(chain_record(cp_body, st))
            self._upload()
            publish(anchor, cp_body)

    def flush(self) -> None:
        with self._lock:
            self._upload()

    def close(self, checkpointer: Checkpointer) -> None:
        if os.getpid() != self._pid:
            return
        self.checkpoint(checkpointer)

    def __repr__(self) -> str:
        return f"S3Sink({self.name!r})"


def read_s3_log(uri: str, *, client: Any = None) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(segment key, line number, line)`` of every segment under an S3 log URI."""
    from weightguard._internal.audit.checkpoint import _parse_s3

    bucket, prefix = _parse_s3(uri)
    c = s3_client(client)
    base = f"{prefix}/" if prefix else ""
    keys: list[str] = []
    try:
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                rest = k[len(base) :].split("/")
                if len(rest) == 3 and rest[1] == "segments" and rest[2].endswith(".jsonl"):
                    keys.append(k)
    except Exception as exc:
        raise AuditError(
            f"cannot list audit segments under {uri} ({s3_cause(exc)})",
            hint="check the S3 endpoint, bucket and credentials",
        ) from None
    keys.sort()
    for k in keys:
        try:
            data = c.get_object(Bucket=bucket, Key=k)["Body"].read()
        except Exception as exc:
            raise AuditError(f"cannot read audit segment s3://{bucket}/{k} ({exc!s:.80})") from None
        for i, line in enumerate(data.splitlines(keepends=True), 1):
            yield f"s3://{bucket}/{k}", i, line


def file_segments(path: str) -> list[str]:
    """Rotated segments ``<path>.<12 digits>`` in order, then ``path`` itself."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(path)
    segs = []
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name.startswith(base + ".") and SEGMENT_RE.search(name[len(base) :]):
                segs.append(os.path.join(d, name))
    segs.sort()
    if os.path.exists(path) or not segs:
        segs.append(path)
    # A rotator killed between its link and its replace leaves a segment name that is a
    # second name of a later file (the live one): the same records, read once.
    out: list[str] = []
    seen: dict[tuple[int, int], int] = {}
    for seg in segs:
        try:
            st = os.stat(seg)
        except OSError:
            out.append(seg)
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            out[seen[ident]] = ""
        seen[ident] = len(out)
        out.append(seg)
    return [s for s in out if s]
