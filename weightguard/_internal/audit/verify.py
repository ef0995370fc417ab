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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from weightguard._internal.audit.checkpoint import (
    Anchor,
    CheckpointVerifier,
    anchor_for,
    verifier_for,
)
from weightguard._internal.audit.readers import iter_lines
from weightguard._internal.audit.record import (
    FORMAT_VERSION,
    GENESIS,
    MAX_RECORD_BYTES,
    canonical,
    parse_record,
    torn_fragment,
)
from weightguard._internal.foundation.encoding import canonical_b64decode
from weightguard._internal.foundation.keywords import renamed_keywords
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
    v = rec.get("v")  # type first: JSON true == 1 in Python
    if type(v) is not int or v != FORMAT_VERSION or rec.get("outcome") != "ok":
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


@dataclass
class _Chain:
    summary: LogSummary
    prev_record: dict[str, Any] | None = None
    prev_raw_digest: str = GENESIS
    prev_line: tuple[str, int] | None = None
    # digests of the records the end-of-log pass compares (the anchored head's record);
    # ``None``: not known yet (no anchor lookup), keep every record's
    wanted: frozenset[int] | None = frozenset()
    digests: dict[int, bytes] = field(default_factory=dict)

    def keep(self, seq: int, digest: bytes) -> None:
        if self.wanted is None or seq in self.wanted:
            self.digests[seq] = digest


#: called with each record that continued its log's chain, in log order
RecordVisitor = Callable[[dict[str, Any]], None]


@dataclass
class _Run:
    """One verification: its configuration and what its passes found so far.

    The log streams by once: nothing is kept per record but, per log, the last record
    and the digest the anchor check compares (``_Chain.wanted``).
    """

    verifier: CheckpointVerifier | None
    anchor: Anchor | None
    allow_foreign: bool
    max_unsigned_tail: int
    log_ids: Sequence[str] | None
    on_record: RecordVisitor | None = None
    chains: dict[str, _Chain] = field(default_factory=dict)  # in order of appearance
    torn: tuple[str, int, bytes] | None = None
    crash: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    foreign: int = 0
    total: int = 0
    # the chain's first problem; a later line the parse refuses still comes first
    pending: Problem | None = None
    # a record where another seq was expected: "reordered" if the expected (log, seq)
    # comes later in the log (looked for as the rest streams by), else "deleted"
    look_for: tuple[str, int] | None = None
    if_later: Problem | None = None
    later: bool = False
    latest: dict[str, Any] = field(default_factory=dict)  # anchor lookups, once per log

    def result(self, problem: Problem | None) -> VerifyResult:
        return VerifyResult(
            ok=problem is None,
            records=self.total,
            logs=[c.summary for c in self.chains.values()],
            problem=problem,
            warnings=self.warnings,
            foreign_lines=self.foreign,
            signed=self.verifier is not None,
            crash=self.crash if problem is None else None,
        )


def _problem(
    kind: str,
    msg: str,
    src: str | None = None,
    ln: int | None = None,
    log: str | None = None,
    seq: Any = None,
) -> Problem:
    return Problem(kind, msg, src, ln, log, seq if isinstance(seq, int) else None)


def verify_lines(
    lines: Iterable[tuple[str, int, bytes]],
    *,
    verifier: CheckpointVerifier | None = None,
    anchor: Anchor | None = None,
    allow_foreign: bool = False,
    max_unsigned_tail: int = DEFAULT_MAX_UNSIGNED_TAIL,
    log_ids: Sequence[str] | None = None,
    on_record: RecordVisitor | None = None,
) -> VerifyResult:
    """Verify ``(source, line number, line)`` tuples; the first problem found decides.

    One streaming pass parses each line once and follows each log's chain and its
    in-line checkpoints; then an incomplete last line is judged (a crash, or a cut),
    the logs present are compared with those configured, and per log its anchored
    checkpoint and its unsigned tail.  The verdicts are those of parsing every line
    first: a line that is not a record (or a cut) anywhere decides before a broken
    link, and then no log summary is reported.

    ``on_record(record)`` is called with each record that continued its log's chain,
    as it streams by (one parse per line for a caller that counts while verifying).
    The verdict is known only at the end: keep what was gathered only if ``ok``.
    """
    if max_unsigned_tail < 0:
        raise ConfigError("the maximum unsigned tail cannot be negative")
    run = _Run(verifier, anchor, allow_foreign, max_unsigned_tail, log_ids, on_record)
    problem = _stream_pass(run, lines) or _torn_tail_pass(run)
    if problem is not None:  # as if no chain had been followed: the parse decides
        run.chains.clear()
        run.total = 0
        return run.result(problem)
    problem = _chain_verdict(run) or _expected_logs_pass(run) or _end_of_log_pass(run)
    return run.result(problem)


# -- pass 1: parse (bounded) and follow each log's chain, one line at a time -------------
def _stream_pass(run: _Run, lines: Iterable[tuple[str, int, bytes]]) -> Problem | None:
    for src, ln, raw in lines:
        if run.torn is not None:  # an incomplete line that ends a rotated segment
            return _problem(
                "truncated",
                "the line is incomplete and the log goes on after it (the end of a rotated "
                "segment was cut off mid-record)",
                run.torn[0],
                run.torn[1],
            )
        if not raw.endswith(b"\n"):
            run.torn = (src, ln, raw)
            continue
        body = raw.rstrip(b"\r\n")
        if not body or body.isspace():  # a blank line (body.strip() would copy it)
            continue
        rec, why = _parse_line(body, src, ln)
        if rec is None:
            if run.allow_foreign:
                run.foreign += 1
                continue
            return _problem("malformed", why, src, ln)
        if run.pending is None:
            run.pending = _chain_step(run, src, ln, body, rec)
        elif run.look_for is not None and (rec["log"], rec["seq"]) == run.look_for:
            run.later = True
    return None


def _parse_line(body: bytes, src: str, ln: int) -> tuple[dict[str, Any] | None, str]:
    if len(body) > MAX_RECORD_BYTES:
        return None, "line exceeds the record size limit"
    try:
        return parse_record(body, what=f"{src}:{ln}"), ""
    except AuditError:
        return None, "line is not an audit record (edited or corrupted)"


# -- pass 2: an incomplete last line is a crash (not counted) or a cut --------------------
def _torn_tail_pass(run: _Run) -> Problem | None:
    if run.torn is None:
        return None
    src, ln, raw = run.torn
    if src.startswith("s3://"):  # segments are uploaded whole: no writer tears one
        return _problem(
            "truncated",
            "the last line of an S3 segment is incomplete: the segment was cut off mid-record",
            src,
            ln,
        )
    if torn_fragment(raw):
        run.crash = Problem(
            "crash",
            f"the last line ({len(raw)} bytes) is an incomplete record: the writer "
            "stopped in the middle of writing it (killed or crashed; or a live "
            "writer is writing it now). It was never acknowledged, is not a record "
            "and is not counted; the next writer replaces it with a log.recover record",
            src,
            ln,
        )
        run.warnings.append(f"{src}:{ln}: {run.crash.message}")
        return None
    if run.allow_foreign:
        run.foreign += 1
        return None
    return _problem(
        "truncated", "the last line is incomplete and is not the start of an audit record", src, ln
    )


# -- the chain, record by record (as the log streams by), and its in-line checkpoints -----
def _chain_step(run: _Run, src: str, ln: int, body: bytes, rec: dict[str, Any]) -> Problem | None:
    run.total += 1
    log_id = rec["log"]
    ch = run.chains.get(log_id)
    if ch is None:
        ch = run.chains[log_id] = _Chain(LogSummary(log_id), wanted=_wanted(run, log_id))
        problem = _first_link(rec, src, ln)
    else:
        problem = _next_link(run, ch, rec, src, ln)
    problem = problem or _inline_checkpoint(run, ch, rec, src, ln)
    if problem is not None:
        return problem
    _advance(ch, body, rec, src, ln)
    if run.on_record is not None:
        run.on_record(rec)
    return None


def _chain_verdict(run: _Run) -> Problem | None:
    if run.look_for is not None and run.later:
        return run.if_later
    return run.pending


def _wanted(run: _Run, log_id: str) -> frozenset[int] | None:
    """The record whose digest the anchored checkpoint names (none without an anchor;
    ``None``, every record's, when the anchor cannot be asked yet: the end-of-log
    pass asks again and reports what it says)."""
    if run.anchor is None:
        return frozenset()
    try:
        latest = run.anchor.latest(log_id)
    except Exception:
        return None
    run.latest[log_id] = latest
    if latest is None:
        return frozenset()
    try:
        return frozenset((int(latest["checkpoint"]["size"]) - 1,))
    except Exception:
        return None


def _first_link(rec: dict[str, Any], src: str, ln: int) -> Problem | None:
    log_id, seq = rec["log"], rec["seq"]
    if seq != 0:
        return _problem(
            "deleted",
            f"log starts at seq {seq}: records 0..{seq - 1} are missing "
            "(head deleted, or a rotated segment is missing)",
            src,
            ln,
            log_id,
            seq,
        )
    if rec["prev"] != GENESIS:
        return _problem(
            "edited", "first record's prev is not the genesis value", src, ln, log_id, seq
        )
    return None


def _links(ch: _Chain, prev: str) -> bool:
    """Whether ``prev`` is the digest of the log's previous record."""
    if prev == ch.prev_raw_digest:
        return True
    if ch.prev_record is None:
        return False
    # the previous line might be re-serialised (non-canonical) but unchanged
    alt = "sha256:" + hashlib.sha256(canonical(ch.prev_record)).hexdigest()
    if prev != alt:
        return False
    if ch.summary.last_seq is not None:
        ch.keep(ch.summary.last_seq, bytes.fromhex(alt[7:]))
    return True


def _next_link(run: _Run, ch: _Chain, rec: dict[str, Any], src: str, ln: int) -> Problem | None:
    """A record after the first of its log: it must continue the previous one."""
    log_id, seq = rec["log"], rec["seq"]
    last = ch.summary.last_seq
    exp = last + 1 if last is not None else 0
    linked = _links(ch, rec["prev"])
    if linked and seq == exp:
        return None
    if linked:
        return _problem(
            "edited",
            f"record's seq field was changed (expected {exp}, found {seq})",
            src,
            ln,
            log_id,
            seq,
        )
    if seq == exp:
        pl = ch.prev_line
        psrc = f"{pl[0]}:{pl[1]}" if pl else "?"
        return _problem(
            "edited",
            f"record seq {exp - 1} ({psrc}) was modified: its digest no longer "
            f"matches the prev of record seq {seq}",
            src,
            ln,
            log_id,
            exp - 1,
        )
    if seq < exp:
        return _problem(
            "reordered",
            f"seq {seq} appears after seq {exp - 1} (records out of order or duplicated)",
            src,
            ln,
            log_id,
            seq,
        )
    run.look_for = (log_id, exp)  # decided once the rest of the log streamed by
    run.if_later = _problem(
        "reordered",
        f"seq {seq} appears where seq {exp} was expected; seq {exp} comes later "
        "(records swapped or moved)",
        src,
        ln,
        log_id,
        seq,
    )
    missing = f"{exp}" if seq == exp + 1 else f"{exp}..{seq - 1}"
    return _problem(
        "deleted", f"record(s) seq {missing} are missing before this line", src, ln, log_id, seq
    )


def _inline_checkpoint(
    run: _Run, ch: _Chain, rec: dict[str, Any], src: str, ln: int
) -> Problem | None:
    """A checkpoint record must state the chain it follows and be signed as it says."""
    s = ch.summary
    if rec.get("event") != "checkpoint":
        s.unsigned_tail += 1
        return None
    log_id, seq = rec["log"], rec["seq"]
    cp = rec.get("checkpoint")
    s.checkpoints += 1
    if (
        not isinstance(cp, dict)
        or cp.get("log") != log_id
        or cp.get("size") != seq
        or cp.get("head") != rec["prev"]
    ):
        return _problem(
            "bad_checkpoint",
            "checkpoint contents do not match the chain (log, size or head)",
            src,
            ln,
            log_id,
            seq,
        )
    loose = _unsigned_fields(rec)
    if loose:
        return _problem(
            "bad_checkpoint",
            f"checkpoint line holds fields its signature does not determine ({loose})",
            src,
            ln,
            log_id,
            seq,
        )
    if run.verifier is not None:
        why = run.verifier.check(cp, rec.get("sig"))
        if why is not None:
            return _problem("bad_checkpoint", f"checkpoint {why}", src, ln, log_id, seq)
        s.checkpoints_verified += 1
        # the signed head covers records 0..seq-1; this line itself is fully
        # determined by the signed body and the verified signature
        s.signed_through = seq + 1
    s.last_checkpoint_size = seq
    s.unsigned_tail = 0
    return None


def _advance(ch: _Chain, body: bytes, rec: dict[str, Any], src: str, ln: int) -> None:
    """The record is the log's new head."""
    s = ch.summary
    seq = rec["seq"]
    d = "sha256:" + hashlib.sha256(body).hexdigest()  # canonical lines: the digest
    ch.prev_raw_digest = d
    ch.prev_record = rec
    ch.prev_line = (src, ln)
    if ch.wanted is None or seq in ch.wanted:
        ch.digests[seq] = bytes.fromhex(d[7:])
    s.records += 1
    s.first_seq = 0 if s.first_seq is None else s.first_seq
    s.last_seq = seq
    s.head = d


# -- pass 4: the logs present are the logs configured (log_ids, else the anchor's) --------
def _expected_logs_pass(run: _Run) -> Problem | None:
    expected: list[str] | None = list(run.log_ids) if run.log_ids else None
    if expected is None and run.anchor is not None:
        expected = sorted(run.anchor.log_ids())
    if expected is None:
        return None
    for log_id in run.chains:
        if log_id not in expected:
            where = (
                "--log-id" if run.log_ids else f"the anchor {run.anchor.uri if run.anchor else ''}"
            )
            return _problem(
                "unknown_log",
                f"log {log_id} is not one of the logs named by {where}: a log rewritten "
                "under a fresh id, or another log mixed in (name it with --log-id)",
                log=log_id,
            )
    for log_id in expected:
        if log_id not in run.chains:
            return _problem(
                "deleted",
                f"log {log_id} (named by "
                f"{'--log-id' if run.log_ids else 'the anchor'}) is not in the log",
                log=log_id,
            )
    return None


# -- pass 5: per log, its head, its anchored checkpoint and its unsigned tail -------------
def _end_of_log_pass(run: _Run) -> Problem | None:
    for ch in run.chains.values():
        s = ch.summary
        if ch.prev_record is not None and s.last_seq is not None:
            s.head = "sha256:" + hashlib.sha256(canonical(ch.prev_record)).hexdigest()
            ch.keep(s.last_seq, bytes.fromhex(s.head[7:]))
        if run.anchor is not None:
            problem = _anchored(run, run.anchor, ch)
            if problem is not None:
                return problem
        elif s.records:
            run.warnings.append(
                f"log {s.log_id}: no anchor given; a tail cut at a record boundary "
                f"after the last checkpoint cannot be detected"
            )
        problem = _unsigned_tail(run, s)
        if problem is not None:
            return problem
        _signature_warnings(run, s)
    return None


def _anchored(run: _Run, anchor: Anchor, ch: _Chain) -> Problem | None:
    """The log holds the anchor's latest checkpoint (addressed by the configured id)."""
    s = ch.summary
    log_id = s.log_id
    latest = run.latest[log_id] if log_id in run.latest else anchor.latest(log_id)
    if latest is None:
        return _problem(
            "unanchored",
            f"log {log_id} has no checkpoint at the anchor {anchor.uri}",
            anchor.uri,
            log=log_id,
        )
    cp, sig = latest["checkpoint"], latest["sig"]
    if cp.get("log") != log_id:
        return _problem(
            "bad_checkpoint", "anchored checkpoint names another log", anchor.uri, log=log_id
        )
    if run.verifier is not None:
        why = run.verifier.check(cp, sig)
        if why is not None:
            return _problem("bad_checkpoint", f"anchored checkpoint {why}", anchor.uri, log=log_id)
    else:
        run.warnings.append(
            f"log {log_id}: anchored checkpoint signature not checked "
            "(pass --checkpoint-key or --checkpoint-vault-key)"
        )
    size = int(cp["size"])
    s.anchored_size = size
    have = (s.last_seq + 1) if s.last_seq is not None else 0
    if have < size:
        return _problem(
            "truncated",
            f"the anchor ({anchor.uri}) says the log had {size} records "
            f"(head {cp['head']}), but only {have} are present: "
            "the tail was cut off",
            log=log_id,
            seq=have,
        )
    got = ch.digests.get(size - 1)
    if got is None or "sha256:" + got.hex() != cp["head"]:
        return _problem(
            "edited",
            f"record seq {size - 1} does not match the anchored head {cp['head']}",
            log=log_id,
            seq=size - 1,
        )
    if run.verifier is not None:
        s.signed_through = max(s.signed_through, size)
    return None


def _unsigned_tail(run: _Run, s: LogSummary) -> Problem | None:
    """With a key or an anchor: at most ``max_unsigned_tail`` records not signed."""
    if run.verifier is None and run.anchor is None:
        return None
    tail = s.records - s.signed_through
    s.unsigned_tail = tail
    if tail <= run.max_unsigned_tail:
        return None
    first = s.signed_through
    span = f"seq {first}" if tail == 1 else f"seq {first}..{first + tail - 1}"
    why = (
        "no checkpoint key was given, so no checkpoint signature was checked"
        if run.verifier is None
        else "checkpoints stripped and the chain recomputed, or records written "
        "after the last checkpoint"
    )
    return _problem(
        "unsigned",
        f"{tail} record(s) ({span}) are not covered by a verified signed "
        f"checkpoint; at most {run.max_unsigned_tail} may be ({why}; an auditor "
        "accepting a live log's tail says so with --max-unsigned-tail N)",
        log=s.log_id,
        seq=first,
    )


def _signature_warnings(run: _Run, s: LogSummary) -> None:
    if run.verifier is None:
        if s.checkpoints:
            run.warnings.append(
                f"log {s.log_id}: {s.checkpoints} checkpoint signature(s) not checked "
                "(pass --checkpoint-key or --checkpoint-vault-key)"
            )
        else:
            run.warnings.append(f"log {s.log_id}: no signed checkpoint in the log")
    if s.unsigned_tail and s.checkpoints:
        run.warnings.append(
            f"log {s.log_id}: {s.unsigned_tail} record(s) after the last checkpoint are "
            "not covered by a signature yet"
        )


@renamed_keywords(vault_key="checkpoint_vault_key")
def verify_log(
    log: str | os.PathLike[str],
    *,
    checkpoint_key: str | os.PathLike[str] | None = None,
    checkpoint_vault_key: str | None = None,
    anchor: str | Anchor | None = None,
    allow_foreign: bool = False,
    s3_client: Any = None,
    vault_client: Any = None,
    max_unsigned_tail: int = DEFAULT_MAX_UNSIGNED_TAIL,
    log_ids: Sequence[str] | None = None,
    on_record: RecordVisitor | None = None,
    progress: Callable[[int], None] | None = None,
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

    The log is read once, in bounded memory.  ``on_record(record)`` sees each record
    that continued its chain as it streams by (see :func:`verify_lines`: keep what it
    gathered only if the result is ``ok``); ``progress(n)`` is called with the bytes
    read so far since its last call (about every MiB, and at the end).
    """
    verifier: CheckpointVerifier | None = None
    if checkpoint_key is not None and checkpoint_vault_key is not None:
        raise ConfigError("give either a checkpoint key file or a Vault key, not both")
    if checkpoint_key is not None:
        verifier = verifier_for(os.fspath(checkpoint_key))
    elif checkpoint_vault_key is not None:
        verifier = verifier_for(checkpoint_vault_key, vault_client=vault_client)
    anc: Anchor | None
    if isinstance(anchor, str):
        anc = anchor_for(anchor, s3=s3_client, vault_client=vault_client)
    else:
        anc = anchor
    src = os.fspath(log)
    lines = iter_lines(src, s3_client=s3_client)
    return verify_lines(
        lines if progress is None else _counting_bytes(lines, progress),
        verifier=verifier,
        anchor=anc,
        allow_foreign=allow_foreign,
        max_unsigned_tail=max_unsigned_tail,
        log_ids=log_ids,
        on_record=on_record,
    )


_PROGRESS_STEP = 1 << 20


def _counting_bytes(
    lines: Iterable[tuple[str, int, bytes]], progress: Callable[[int], None]
) -> Iterator[tuple[str, int, bytes]]:
    n = 0
    for line in lines:
        n += len(line[2])
        if n >= _PROGRESS_STEP:
            progress(n)
            n = 0
        yield line
    if n:
        progress(n)
