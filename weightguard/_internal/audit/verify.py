"""Verify an audit log: chain, sequence, checkpoints, anchor.

The verifier reports the *first* broken record and why:

* ``malformed``  a line is not an audit record (or is over the size limit);
* ``edited``     a record's content changed (its digest no longer matches the next
                 record's ``prev``, or the anchored/checkpointed head);
* ``deleted``    records are missing (sequence gap, or the log starts after 0);
* ``reordered``  records are out of order or duplicated;
* ``truncated``  the log is shorter than its newest anchored checkpoint, or an
                 incomplete line is not what a crash leaves (not at the very end of
                 the log, or not the start of a record); a crash's torn last line
                 is reported in ``crash``, not as a problem;
* ``bad_checkpoint`` a checkpoint's signature or contents do not verify, or its line
                 holds a field the signature does not determine;
* ``unsigned``   with a checkpoint key or an anchor: more records than the stated
                 maximum unsigned tail are not covered by a verified checkpoint
                 (checkpoints stripped and the chain recomputed, or a live log);
* ``unknown_log`` a log id the verifier did not configure (``log_ids``, or the logs
                 the anchor holds): e.g. the log rewritten under a fresh id;
* ``unanchored`` a configured log has no checkpoint at the anchor.

What decides is the verifier's configuration (key, anchor, log ids), never the log's
own claims.  Without a key nothing is proven against a forger who can rewrite the
file and recompute the chain; ``signed`` in the result says whether signatures were
checked.  Without an anchor a clean cut at a record boundary inside the allowed
unsigned tail cannot be detected; the result says so in ``warnings``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from weightguard._internal.audit.checkpoint import (
    Anchor,
    CheckpointVerifier,
    anchor_for,
    verifier_for,
)
from weightguard._internal.audit.record import (
    FORMAT_VERSION,
    GENESIS,
    MAX_RECORD_BYTES,
    canonical,
    parse_record,
    torn_fragment,
)
from weightguard._internal.foundation.encoding import canonical_b64decode
from weightguard.errors import AuditError, ConfigError

# A log the writer closed ends with a checkpoint, so by default nothing may be unsigned;
# an auditor checking a live (or crashed) writer's log states how much tail to accept.
DEFAULT_MAX_UNSIGNED_TAIL = 0

_CHECKPOINT_LINE = frozenset(
    ("v", "log", "seq", "prev", "time", "event", "outcome", "checkpoint", "sig")
)
_CHECKPOINT_BODY = frozenset(("log", "size", "head", "time"))
_SIGNATURE = frozenset(("alg", "key_id", "value"))


def _unsigned_fields(rec: dict[str, Any]) -> str:
    """What in a checkpoint line the signed body and its signature do not pin down.

    The signature covers the body (log, size, head, time); the line's outer fields
    must be exactly those the writer derives from it, so no byte of the line can
    change unnoticed (the last checkpoint's line is covered by no later record).
    """

    cp, sig = rec.get("checkpoint"), rec.get("sig")
    extra = sorted(set(rec) - _CHECKPOINT_LINE)
    if extra:
        return "extra field(s) " + ", ".join(extra)[:120]
    if rec.get("v") != FORMAT_VERSION or rec.get("outcome") != "ok":
        return "v or outcome"
    if not isinstance(cp, dict) or set(cp) != _CHECKPOINT_BODY:
        return "checkpoint body"
    if rec.get("time") != cp.get("time"):
        return "time differs from the signed time"
    if not isinstance(sig, dict) or set(sig) != _SIGNATURE:
        return "sig"
    value = sig.get("value")
    if not isinstance(value, str):
        return "sig.value is not base64"
    try:
        canonical_b64decode(value)
    except ValueError as exc:
        return f"sig.value: {exc}"
    return ""


@dataclass
class Problem:
    kind: str
    message: str
    source: str | None = None
    line: int | None = None
    log_id: str | None = None
    seq: int | None = None


@dataclass
class LogSummary:
    log_id: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str = GENESIS
    checkpoints: int = 0
    checkpoints_verified: int = 0
    last_checkpoint_size: int | None = None
    anchored_size: int | None = None
    unsigned_tail: int = 0
    signed_through: int = 0  # records 0..signed_through-1 are covered by verified signatures


@dataclass
class VerifyResult:
    ok: bool
    records: int
    logs: list[LogSummary] = field(default_factory=list)
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    foreign_lines: int = 0
    signed: bool = False  # checkpoint signatures were checked with a configured key
    # the log ends in what a writer killed mid-write leaves (docs/audit.md, "Crashes")
    crash: Problem | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.ok:
            parts = []
            for s in self.logs:
                cp = f"{s.checkpoints_verified}/{s.checkpoints} checkpoints verified"
                anc = f", anchored at {s.anchored_size}" if s.anchored_size is not None else ""
                parts.append(
                    f"log {s.log_id}: {s.records} records (seq {s.first_seq}..{s.last_seq}), "
                    f"{cp}{anc}"
                )
            body = "; ".join(parts) if parts else "empty log"
            if self.crash is not None:
                body += (
                    f"; the writer stopped mid-record: an incomplete last line "
                    f"({self.crash.source}:{self.crash.line}) was not counted (a crash, "
                    "see docs/audit.md)"
                )
            if not self.signed:
                # Self-consistent is all an unsigned chain shows: never plain "OK".
                return "UNSIGNED (chain intact, no checkpoint key given): " + body
            return "OK: " + body
        p = self.problem
        assert p is not None
        where = f" at {p.source}:{p.line}" if p.source and p.line else ""
        seq = f" (log {p.log_id}, seq {p.seq})" if p.seq is not None else ""
        return f"BROKEN ({p.kind}){where}{seq}: {p.message}"


def iter_lines(source: str, *, s3_client: Any = None) -> Iterator[tuple[str, int, bytes]]:
    """(source name, line number, raw line incl. newline) for a path, ``-`` or s3://."""
    if source == "-":
        for i, line in enumerate(sys.stdin.buffer, 1):
            yield "-", i, line
        return
    if source.startswith("s3://"):
        from weightguard._internal.audit.sinks import read_s3_log

        yield from read_s3_log(source, client=s3_client)
        return
    from weightguard._internal.audit.sinks import file_segments

    path = source[len("file://") :] if source.startswith("file://") else source
    segs = file_segments(path)
    if not os.path.exists(segs[-1]):
        raise ConfigError(f"audit log {path} does not exist", hint="check the path")
    for seg in segs:
        with open(seg, "rb") as f:
            for i, line in enumerate(f, 1):
                yield seg, i, line


@dataclass
class _Chain:
    summary: LogSummary
    prev_record: dict[str, Any] | None = None
    prev_raw_digest: str = GENESIS
    prev_line: tuple[str, int] | None = None
    digests: dict[int, bytes] = field(default_factory=dict)


def verify_lines(
    lines: Iterable[tuple[str, int, bytes]],
    *,
    verifier: CheckpointVerifier | None = None,
    anchor: Anchor | None = None,
    allow_foreign: bool = False,
    max_unsigned_tail: int = DEFAULT_MAX_UNSIGNED_TAIL,
    log_ids: Sequence[str] | None = None,
) -> VerifyResult:
    if max_unsigned_tail < 0:
        raise ConfigError("the maximum unsigned tail cannot be negative")
    chains: dict[str, _Chain] = {}
    order: list[str] = []
    warnings: list[str] = []
    foreign = 0
    total = 0
    buffered: list[tuple[str, int, bytes, dict[str, Any]]] = []
    present: set[tuple[str, int]] = set()

    def fail(
        kind: str, msg: str, src: str | None, ln: int | None, log: str | None, seq: Any
    ) -> VerifyResult:
        return VerifyResult(
            ok=False,
            records=total,
            logs=[c.summary for c in chains.values()],
            problem=Problem(kind, msg, src, ln, log, seq if isinstance(seq, int) else None),
            warnings=warnings,
            foreign_lines=foreign,
            signed=verifier is not None,
        )

    # pass 1: parse (bounded), remember which (log, seq) exist for reorder detection
    torn: tuple[str, int, bytes] | None = None
    for src, ln, raw in lines:
        if torn is not None:  # an incomplete line that ends a rotated segment
            return fail(
                "truncated",
                "the line is incomplete and the log goes on after it (the end of a rotated "
                "segment was cut off mid-record)",
                torn[0],
                torn[1],
                None,
                None,
            )
        if not raw.endswith(b"\n"):
            torn = (src, ln, raw)
            continue
        body = raw.rstrip(b"\r\n")
        if not body.strip():
            continue
        if len(body) > MAX_RECORD_BYTES:
            if allow_foreign:
                foreign += 1
                continue
            return fail("malformed", "line exceeds the record size limit", src, ln, None, None)
        try:
            rec = parse_record(body, what=f"{src}:{ln}")
        except AuditError:
            rec = None
        if rec is None:
            if allow_foreign:
                foreign += 1
                continue
            return fail(
                "malformed",
                "line is not an audit record (edited or corrupted)",
                src,
                ln,
                None,
                None,
            )
        buffered.append((src, ln, body, rec))
        present.add((rec["log"], rec["seq"]))

    crash: Problem | None = None
    if torn is not None:
        src, ln, raw = torn
        if src.startswith("s3://"):  # segments are uploaded whole: no writer tears one
            return fail(
                "truncated",
                "the last line of an S3 segment is incomplete: the segment was cut off mid-record",
                src,
                ln,
                None,
                None,
            )
        if torn_fragment(raw):
            crash = Problem(
                "crash",
                f"the last line ({len(raw)} bytes) is an incomplete record: the writer "
                "stopped in the middle of writing it (killed or crashed; or a live "
                "writer is writing it now). It was never acknowledged, is not a record "
                "and is not counted; the next writer replaces it with a log.recover record",
                src,
                ln,
            )
            warnings.append(f"{src}:{ln}: {crash.message}")
        elif allow_foreign:
            foreign += 1
        else:
            return fail(
                "truncated",
                "the last line is incomplete and is not the start of an audit record",
                src,
                ln,
                None,
                None,
            )

    # pass 2: chain
    for src, ln, body, rec in buffered:
        total += 1
        log_id, seq, prev = rec["log"], rec["seq"], rec["prev"]
        ch = chains.get(log_id)
        if ch is None:
            ch = chains[log_id] = _Chain(LogSummary(log_id))
            order.append(log_id)
            if seq != 0:
                return fail(
                    "deleted",
                    f"log starts at seq {seq}: records 0..{seq - 1} are missing "
                    "(head deleted, or a rotated segment is missing)",
                    src,
                    ln,
                    log_id,
                    seq,
                )
            if prev != GENESIS:
                return fail(
                    "edited", "first record's prev is not the genesis value", src, ln, log_id, seq
                )
        else:
            exp = ch.summary.last_seq + 1 if ch.summary.last_seq is not None else 0
            linked = prev == ch.prev_raw_digest
            if not linked and ch.prev_record is not None:
                # the previous line might be re-serialised (non-canonical) but unchanged
                alt = "sha256:" + hashlib.sha256(canonical(ch.prev_record)).hexdigest()
                linked = prev == alt
                if linked and ch.summary.last_seq is not None:
                    ch.digests[ch.summary.last_seq] = bytes.fromhex(alt[7:])
            if not (linked and seq == exp):
                pl = ch.prev_line
                if linked:
                    return fail(
                        "edited",
                        f"record's seq field was changed (expected {exp}, found {seq})",
                        src,
                        ln,
                        log_id,
                        seq,
                    )
                if seq == exp:
                    psrc = f"{pl[0]}:{pl[1]}" if pl else "?"
                    return fail(
                        "edited",
                        f"record seq {exp - 1} ({psrc}) was modified: its digest no longer "
                        f"matches the prev of record seq {seq}",
                        src,
                        ln,
                        log_id,
                        exp - 1,
                    )
                if seq < exp:
                    return fail(
                        "reordered",
                        f"seq {seq} appears after seq {exp - 1} "
                        "(records out of order or duplicated)",
                        src,
                        ln,
                        log_id,
                        seq,
                    )
                if (log_id, exp) in present:
                    return fail(
                        "reordered",
                        f"seq {seq} appears where seq {exp} was expected; seq {exp} comes later "
                        "(records swapped or moved)",
                        src,
                        ln,
                        log_id,
                        seq,
                    )
                missing = f"{exp}" if seq == exp + 1 else f"{exp}..{seq - 1}"
                return fail(
                    "deleted",
                    f"record(s) seq {missing} are missing before this line",
                    src,
                    ln,
                    log_id,
                    seq,
                )
        # checkpoint record
        s = ch.summary
        if rec.get("event") == "checkpoint":
            cp = rec.get("checkpoint")
            s.checkpoints += 1
            if (
                not isinstance(cp, dict)
                or cp.get("log") != log_id
                or cp.get("size") != seq
                or cp.get("head") != prev
            ):
                return fail(
                    "bad_checkpoint",
                    "checkpoint contents do not match the chain (log, size or head)",
                    src,
                    ln,
                    log_id,
                    seq,
                )
            loose = _unsigned_fields(rec)
            if loose:
                return fail(
                    "bad_checkpoint",
                    f"checkpoint line holds fields its signature does not determine ({loose})",
                    src,
                    ln,
                    log_id,
                    seq,
                )
            if verifier is not None:
                why = verifier.check(cp, rec.get("sig"))
                if why is not None:
                    return fail("bad_checkpoint", f"checkpoint {why}", src, ln, log_id, seq)
                s.checkpoints_verified += 1
                # the signed head covers records 0..seq-1; this line itself is fully
                # determined by the signed body and the verified signature
                s.signed_through = seq + 1
            s.last_checkpoint_size = seq
            s.unsigned_tail = 0
        else:
            s.unsigned_tail += 1
        d = "sha256:" + hashlib.sha256(body).hexdigest()  # canonical lines: the digest
        ch.prev_raw_digest = d
        ch.prev_record = rec
        ch.prev_line = (src, ln)
        ch.digests[seq] = bytes.fromhex(d[7:])
        s.records += 1
        s.first_seq = 0 if s.first_seq is None else s.first_seq
        s.last_seq = seq
        s.head = d

    # which logs: the verifier's configuration (log_ids, else the anchor's own list)
    expected: list[str] | None = list(log_ids) if log_ids else None
    if expected is None and anchor is not None:
        expected = sorted(anchor.log_ids())
    if expected is not None:
        for log_id in order:
            if log_id not in expected:
                where = "--log-id" if log_ids else f"the anchor {anchor.uri if anchor else ''}"
                return fail(
                    "unknown_log",
                    f"log {log_id} is not one of the logs named by {where}: a log rewritten "
                    "under a fresh id, or another log mixed in (name it with --log-id)",
                    None,
                    None,
                    log_id,
                    None,
                )
        for log_id in expected:
            if log_id not in chains:
                return fail(
                    "deleted",
                    f"log {log_id} (named by "
                    f"{'--log-id' if log_ids else 'the anchor'}) is not in the log",
                    None,
                    None,
                    log_id,
                    None,
                )
    enforce = verifier is not None or anchor is not None
    for log_id in order:
        ch = chains[log_id]
        s = ch.summary
        if ch.prev_record is not None and s.last_seq is not None:
            s.head = "sha256:" + hashlib.sha256(canonical(ch.prev_record)).hexdigest()
            ch.digests[s.last_seq] = bytes.fromhex(s.head[7:])
        if anchor is not None:
            latest = anchor.latest(log_id)  # addressed by the configured id (checked above)
            if latest is None:
                return fail(
                    "unanchored",
                    f"log {log_id} has no checkpoint at the anchor {anchor.uri}",
                    anchor.uri,
                    None,
                    log_id,
                    None,
                )
            cp, sig = latest["checkpoint"], latest["sig"]
            if cp.get("log") != log_id:
                return fail(
                    "bad_checkpoint",
                    "anchored checkpoint names another log",
                    anchor.uri,
                    None,
                    log_id,
                    None,
                )
            if verifier is not None:
                why = verifier.check(cp, sig)
                if why is not None:
                    return fail(
                        "bad_checkpoint",
                        f"anchored checkpoint {why}",
                        anchor.uri,
                        None,
                        log_id,
                        None,
                    )
            else:
                warnings.append(
                    f"log {log_id}: anchored checkpoint signature not checked "
                    "(pass --checkpoint-key or --vault-key)"
                )
            size = int(cp["size"])
            s.anchored_size = size
            have = (s.last_seq + 1) if s.last_seq is not None else 0
            if have < size:
                return fail(
                    "truncated",
                    f"the anchor ({anchor.uri}) says the log had {size} records "
                    f"(head {cp['head']}), but only {have} are present: "
                    "the tail was cut off",
                    None,
                    None,
                    log_id,
                    have,
                )
            got = ch.digests.get(size - 1)
            if got is None or "sha256:" + got.hex() != cp["head"]:
                return fail(
                    "edited",
                    f"record seq {size - 1} does not match the anchored head {cp['head']}",
                    None,
                    None,
                    log_id,
                    size - 1,
                )
            if verifier is not None:
                s.signed_through = max(s.signed_through, size)
        elif s.records:
            warnings.append(
                f"log {log_id}: no anchor given; a tail cut at a record boundary "
                f"after the last checkpoint cannot be detected"
            )
        if enforce:
            tail = s.records - s.signed_through
            s.unsigned_tail = tail
            if tail > max_unsigned_tail:
                first = s.signed_through
                span = f"seq {first}" if tail == 1 else f"seq {first}..{first + tail - 1}"
                why = (
                    "no checkpoint key was given, so no checkpoint signature was checked"
                    if verifier is None
                    else "checkpoints stripped and the chain recomputed, or records written "
                    "after the last checkpoint"
                )
                return fail(
                    "unsigned",
                    f"{tail} record(s) ({span}) are not covered by a verified signed "
                    f"checkpoint; at most {max_unsigned_tail} may be ({why}; an auditor "
                    "accepting a live log's tail says so with --max-unsigned-tail N)",
                    None,
                    None,
                    log_id,
                    first,
                )
        if verifier is None:
            if s.checkpoints:
                warnings.append(
                    f"log {log_id}: {s.checkpoints} checkpoint signature(s) not checked "
                    "(pass --checkpoint-key or --vault-key)"
                )
            else:
                warnings.append(f"log {log_id}: no signed checkpoint in the log")
        if s.unsigned_tail and s.checkpoints:
            warnings.append(
                f"log {log_id}: {s.unsigned_tail} record(s) after the last checkpoint are "
                "not covered by a signature yet"
            )
    return VerifyResult(
        ok=True,
        records=total,
        logs=[chains[i].summary for i in order],
        warnings=warnings,
        foreign_lines=foreign,
        signed=verifier is not None,
        crash=crash,
    )


def verify_log(
    log: str | os.PathLike[str],
    *,
    checkpoint_key: str | os.PathLike[str] | None = None,
    vault_key: str | None = None,
    anchor: str | Anchor | None = None,
    allow_foreign: bool = False,
    s3_client: Any = None,
    vault_client: Any = None,
    max_unsigned_tail: int = DEFAULT_MAX_UNSIGNED_TAIL,
    log_ids: Sequence[str] | None = None,
) -> VerifyResult:
    """Verify a log (path incl. rotated segments, ``-`` for stdin, or ``s3://`` prefix).

    Returns a :class:`VerifyResult`; ``ok`` is False with ``problem`` set at the first
    broken record.  With a checkpoint key or an anchor, verified signed checkpoints
    must cover every record but at most ``max_unsigned_tail`` at the end.
    ``log_ids`` names the logs expected (and the anchor entries read); without it an
    anchor's own list of logs is expected.  ``result.signed`` is False when no key
    was given: then the result proves nothing against someone who can rewrite the
    file.  Raises ConfigError/AuditError only when the log, key or anchor cannot be
    read.
    """
    verifier: CheckpointVerifier | None = None
    if checkpoint_key is not None and vault_key is not None:
        raise ConfigError("give either a checkpoint key file or a Vault key, not both")
    if checkpoint_key is not None:
        verifier = verifier_for(os.fspath(checkpoint_key))
    elif vault_key is not None:
        verifier = verifier_for(vault_key, vault_client=vault_client)
    anc: Anchor | None
    if isinstance(anchor, str):
        anc = anchor_for(anchor, s3=s3_client, vault_client=vault_client)
    else:
        anc = anchor
    src = os.fspath(log)
    return verify_lines(
        iter_lines(src, s3_client=s3_client),
        verifier=verifier,
        anchor=anc,
        allow_foreign=allow_foreign,
        max_unsigned_tail=max_unsigned_tail,
        log_ids=log_ids,
    )


def _matches_text(needle: str, value: Any) -> bool:
    if isinstance(value, dict):
        return any(_matches_text(needle, v) for v in value.values())
    if isinstance(value, list):
        return any(_matches_text(needle, v) for v in value)
    return value is not None and needle in str(value).lower()


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
    from weightguard._internal.audit.record import parse_time

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
        if event is not None and not (
            ev.startswith(event[:-1]) if event.endswith("*") else ev == event
        ):
            continue
        if outcome is not None and rec.get("outcome") != outcome:
            continue
        if since is not None:
            try:
                if parse_time(str(rec.get("time"))) < since:
                    continue
            except ValueError:
                continue
        if artifact is not None and not _matches_text(artifact.lower(), rec.get("object")):
            continue
        if subject is not None and not _matches_text(subject.lower(), rec.get("subject")):
            continue
        yield rec
