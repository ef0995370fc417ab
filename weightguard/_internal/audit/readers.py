"""Reading audit logs back: a file and its rotated segments, stdin, S3 segments.

The layouts written by the sinks are named here once: a file log's closed segments
are ``<path>.<seq of their last record, 12 digits>``; an S3 log's segments are
``<prefix>/<log id>/segments/<first seq>-<last seq>.jsonl``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from weightguard._internal.audit.checkpoint import _parse_s3
from weightguard._internal.audit.record import MAX_RECORD_BYTES, parse_record, parse_time
from weightguard._internal.foundation.s3 import audit_client as s3_client
from weightguard._internal.foundation.s3errors import s3_cause
from weightguard.errors import AuditError, ConfigError

SEGMENT_RE = re.compile(r"\.(\d{12})$")


def file_segment_name(path: str, last_seq: int) -> str:
    """The name a rotation gives the closed segment of ``path`` ending at ``last_seq``."""
    return f"{path}.{last_seq:012d}"


def is_file_segment(base: str, name: str) -> bool:
    """Whether directory entry ``name`` is a closed segment of the log named ``base``."""
    return name.startswith(base + ".") and SEGMENT_RE.search(name[len(base) :]) is not None


def s3_segment_key(prefix: str, log_id: str, first: int, last: int) -> str:
    base = f"{prefix}/" if prefix else ""
    return f"{base}{log_id}/segments/{first:012d}-{last:012d}.jsonl"


def _is_s3_segment_key(rest: str) -> bool:
    """``rest``: a key below the log prefix; a segment is ``<log id>/segments/<x>.jsonl``."""
    parts = rest.split("/")
    return len(parts) == 3 and parts[1] == "segments" and parts[2].endswith(".jsonl")


def file_segments(path: str) -> list[str]:
    """Rotated segments ``<path>.<12 digits>`` in order, then ``path`` itself."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(path)
    segs = []
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if is_file_segment(base, name):
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


def read_s3_log(uri: str, *, client: Any = None) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(segment key, line number, line)`` of every segment under an S3 log URI."""
    bucket, prefix = _parse_s3(uri)
    c = s3_client(client)
    base = f"{prefix}/" if prefix else ""
    keys: list[str] = []
    try:
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                if _is_s3_segment_key(obj["Key"][len(base) :]):
                    keys.append(obj["Key"])
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


def iter_lines(source: str, *, s3_client: Any = None) -> Iterator[tuple[str, int, bytes]]:
    """(source name, line number, raw line incl. newline) for a path, ``-`` or s3://."""
    if source == "-":
        for i, line in enumerate(sys.stdin.buffer, 1):
            yield "-", i, line
        return
    if source.startswith("s3://"):
        yield from read_s3_log(source, client=s3_client)
        return
    path = source[len("file://") :] if source.startswith("file://") else source
    segs = file_segments(path)
    if not os.path.exists(segs[-1]):
        raise ConfigError(f"audit log {path} does not exist", hint="check the path")
    for seg in segs:
        with open(seg, "rb") as f:
            for i, line in enumerate(f, 1):
                yield seg, i, line


def log_size(source: str) -> int | None:
    """The bytes :func:`iter_lines` will read from ``source``; ``None`` when not known
    before reading (stdin, S3) or not readable (the reader reports that)."""
    if source == "-" or source.startswith("s3://"):
        return None
    path = source[len("file://") :] if source.startswith("file://") else source
    try:
        return sum(os.path.getsize(seg) for seg in file_segments(path))
    except OSError:
        return None


def _matches_text(needle: str, value: Any) -> bool:
    if isinstance(value, dict):
        return any(_matches_text(needle, v) for v in value.values())
    if isinstance(value, list):
        return any(_matches_text(needle, v) for v in value)
    return value is not None and needle in str(value).lower()


def _event_matches(event: str, wanted: str) -> bool:
    """``wanted`` exact, or a prefix when it ends with ``*``."""
    return event.startswith(wanted[:-1]) if wanted.endswith("*") else event == wanted


def _after(rec: dict[str, Any], since: Any) -> bool:
    try:
        return bool(parse_time(str(rec.get("time"))) >= since)
    except ValueError:
        return False


def read_records(
    log: str | os.PathLike[str],
    *,
    since: Any = None,
    artifact: str | None = None,
    subject: str | None = None,
    outcome: str | None = None,
    event: str | None = None,
    include_checkpoints: bool = False,
    s3_client: Any = None,
) -> Iterator[dict[str, Any]]:
    """Records of a log, filtered (no integrity check: use verify_log for that).

    ``since`` is a datetime; ``artifact`` a substring of the object's fields (URI,
    digest, ...); ``subject`` a substring of any subject field (user, host, pod, SA);
    ``outcome``/``event`` exact (``event`` may end with ``*`` as a prefix match).
    """
    for _src, _ln, raw in iter_lines(os.fspath(log), s3_client=s3_client):
        body = raw.strip()
        if not body or len(body) > MAX_RECORD_BYTES or not body.startswith(b"{"):
            continue
        try:
            rec = parse_record(body, what="audit line")
        except AuditError:
            continue
        ev = str(rec.get("event", ""))
        if ev == "checkpoint" and not include_checkpoints:
            continue
        if event is not None and not _event_matches(ev, event):
            continue
        if outcome is not None and rec.get("outcome") != outcome:
            continue
        if since is not None and not _after(rec, since):
            continue
        if artifact is not None and not _matches_text(artifact.lower(), rec.get("object")):
            continue
        if subject is not None and not _matches_text(subject.lower(), rec.get("subject")):
            continue
        yield rec
