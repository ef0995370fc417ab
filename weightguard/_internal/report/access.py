"""Access statistics from audit records, in one streaming pass and bounded memory.

:class:`AccessStats` sees each record once (``add``) and keeps only counters, per-hour
load counts per identity (at most ``MAX_IDENTITIES`` identities, the rest as
``(other)``), and capped samples of the events an auditor reads one by one (denials,
tamper, rotations).  A million records cost the same memory as a thousand.

The report feeds each record as the audit verifier accepts it (``verify_log``'s
``on_record``: one read, one parse per line) and keeps the statistics only when the
whole log verified: a log that does not is never summarised.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

#: identities with their own timeline; the rest share OTHER's (bounded memory)
MAX_IDENTITIES = 64
#: distinct identities, pods or nodes counted one by one; beyond, they count as OTHER
MAX_KEYS = 10_000
#: events listed one by one per kind (denials, tamper, rotations); the rest are counted
MAX_LISTED = 200
#: largest silences between consecutive events kept
MAX_GAPS = 5
OTHER = "(other)"

LOAD_OK = "load.ok"
DENIED_OUTCOMES = frozenset(("denied",))
TAMPER_EVENTS = frozenset(("tamper.detected",))
TAMPER_OUTCOMES = frozenset(("tamper",))
ROTATION_EVENTS = frozenset(("rewrap",))


def identity_of(subject: Any) -> str:
    """Who acted, in the words of `audit show`: ``namespace/service-account`` in
    Kubernetes, else the Vault role, else ``user@host``."""
    if not isinstance(subject, dict):
        return "?"
    if subject.get("k8s_service_account"):
        return f"{subject.get('k8s_namespace', '?')}/{subject['k8s_service_account']}"
    if subject.get("vault_role"):
        return f"role:{subject['vault_role']}"
    return f"{subject.get('user', subject.get('uid', '?'))}@{subject.get('host', '?')}"


def _bump(counter: Counter[str], key: str, n: int = 1) -> None:
    """Count ``key``, or OTHER once MAX_KEYS distinct keys are counted."""
    if key not in counter and len(counter) >= MAX_KEYS:
        key = OTHER
    counter[key] += n


def _tick(hourly: dict[str, Counter[int]], key: str, hour: int) -> None:
    if key not in hourly:
        if len(hourly) >= MAX_IDENTITIES:
            key = OTHER
        hourly.setdefault(key, Counter())
    hourly[key][hour] += 1


def _add_hourly(hourly: dict[str, Counter[int]], key: str, counts: dict[int, int]) -> None:
    """Hourly counts of ``key``; beyond MAX_IDENTITIES keys, under OTHER."""
    if key not in hourly and len(hourly) >= MAX_IDENTITIES:
        key = OTHER
    hourly.setdefault(key, Counter()).update(counts)


def _hour(t: datetime) -> int:
    return int(t.timestamp()) // 3600


# Times outside this window are not plausible record times (a log anyone can write may
# say year 1 or 9999): such a record is counted but not placed in time, so the plot's
# date axis (matplotlib: years 1 to 9999, with margins) and bin arithmetic stay valid.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2999, 12, 31, tzinfo=UTC)


def parse_record_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)  # Python >= 3.11 reads the trailing "Z"
        t = t if t.tzinfo else t.replace(tzinfo=UTC)
        return t if _EARLIEST <= t <= _LATEST else None
    except (ValueError, OverflowError):
        return None


@dataclass
class Listed:
    """One event an auditor reads on its own (a denial, a tamper event, a rotation)."""

    time: str
    event: str
    outcome: str
    identity: str
    pod: str
    node: str
    object: str
    reason: str
    log: str
    seq: int


@dataclass
class AccessStats:
    events: int = 0
    by_event: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    loads_by_identity: Counter[str] = field(default_factory=Counter)
    denied_by_identity: Counter[str] = field(default_factory=Counter)
    loads_by_pod: Counter[str] = field(default_factory=Counter)
    loads_by_node: Counter[str] = field(default_factory=Counter)
    # identity -> hour index -> load.ok count (the timeline)
    hourly: dict[str, Counter[int]] = field(default_factory=dict)
    hourly_pod: dict[str, Counter[int]] = field(default_factory=dict)  # the same per pod
    hourly_node: dict[str, Counter[int]] = field(default_factory=dict)  # and per node
    denied: list[Listed] = field(default_factory=list)
    tamper: list[Listed] = field(default_factory=list)
    rotations: list[Listed] = field(default_factory=list)
    denied_total: int = 0
    tamper_total: int = 0
    rotations_total: int = 0
    first: datetime | None = None
    last: datetime | None = None
    gaps: list[tuple[float, str, str]] = field(default_factory=list)  # heap (s, from, to)
    untimed: int = 0
    _prev_time: datetime | None = None

    # ------------------------------------------------------------------ feeding
    def add(self, rec: dict[str, Any], *, log: str = "") -> None:
        event = str(rec.get("event", ""))
        if event == "checkpoint":
            return
        self.events += 1
        outcome = str(rec.get("outcome", ""))
        _bump(self.by_event, event)
        _bump(self.by_outcome, outcome)
        subject = rec.get("subject")
        ident = identity_of(subject)
        t = parse_record_time(rec.get("time"))
        if t is None:
            self.untimed += 1
        else:
            self._see_time(t)
        if event == LOAD_OK and outcome == "ok":
            _bump(self.loads_by_identity, ident)
            sub = subject if isinstance(subject, dict) else {}
            pod = str(sub.get("k8s_pod") or sub.get("host") or "?")
            node = str(sub.get("k8s_node") or sub.get("host") or "?")
            _bump(self.loads_by_pod, pod)
            _bump(self.loads_by_node, node)
            if t is not None:
                h = _hour(t)
                _tick(self.hourly, ident, h)
                _tick(self.hourly_pod, pod, h)
                _tick(self.hourly_node, node, h)
        if outcome in DENIED_OUTCOMES:
            self.denied_total += 1
            _bump(self.denied_by_identity, ident)
            if len(self.denied) < MAX_LISTED:
                self.denied.append(self._listed(rec, ident, log))
        if event in TAMPER_EVENTS or outcome in TAMPER_OUTCOMES:
            self.tamper_total += 1
            if len(self.tamper) < MAX_LISTED:
                self.tamper.append(self._listed(rec, ident, log))
        if event in ROTATION_EVENTS and outcome == "ok":
            self.rotations_total += 1
            if len(self.rotations) < MAX_LISTED:
                self.rotations.append(self._listed(rec, ident, log))

    def _see_time(self, t: datetime) -> None:
        if self.first is None or t < self.first:
            self.first = t
        if self.last is None or t > self.last:
            self.last = t
        prev = self._prev_time
        if prev is not None and t > prev:
            gap = (t - prev).total_seconds()
            if len(self.gaps) < MAX_GAPS:
                heapq.heappush(self.gaps, (gap, _iso(prev), _iso(t)))
            elif gap > self.gaps[0][0]:  # formatted only when kept
                heapq.heapreplace(self.gaps, (gap, _iso(prev), _iso(t)))
        self._prev_time = t

    @staticmethod
    def _listed(rec: dict[str, Any], ident: str, log: str) -> Listed:
        sub = rec.get("subject") if isinstance(rec.get("subject"), dict) else {}
        obj = rec.get("object") if isinstance(rec.get("object"), dict) else {}
        assert isinstance(sub, dict) and isinstance(obj, dict)
        what = str(obj.get("uri") or obj.get("path") or obj.get("name") or "")
        if obj.get("key_id"):
            ver = f"@v{obj['key_version']}" if obj.get("key_version") is not None else ""
            what += f" key={obj['key_id']}{ver}"
        extra = rec.get("extra")
        if isinstance(extra, dict) and isinstance(extra.get("previous"), dict):
            prev = extra["previous"]
            pv = f"@v{prev.get('key_version')}" if prev.get("key_version") is not None else ""
            what += f" (was {prev.get('key_id', '?')}{pv})"
        return Listed(
            time=str(rec.get("time", "")),
            event=str(rec.get("event", "")),
            outcome=str(rec.get("outcome", "")),
            identity=ident,
            pod=str(sub.get("k8s_pod") or ""),
            node=str(sub.get("k8s_node") or sub.get("host") or ""),
            object=what.strip(),
            reason=str(rec.get("reason") or ""),
            log=log,
            seq=int(rec.get("seq", -1)),
        )

    def merge(self, other: AccessStats) -> None:
        """Add another log's statistics (the same bounds hold)."""
        self.events += other.events
        self.untimed += other.untimed
        for mine, theirs in (
            (self.by_event, other.by_event),
            (self.by_outcome, other.by_outcome),
            (self.loads_by_identity, other.loads_by_identity),
            (self.denied_by_identity, other.denied_by_identity),
            (self.loads_by_pod, other.loads_by_pod),
            (self.loads_by_node, other.loads_by_node),
        ):
            for key, n in theirs.items():
                _bump(mine, key, n)
        for mine_h, theirs_h in (
            (self.hourly, other.hourly),
            (self.hourly_pod, other.hourly_pod),
            (self.hourly_node, other.hourly_node),
        ):
            for key, counts in theirs_h.items():
                _add_hourly(mine_h, key, counts)
        self.denied = (self.denied + other.denied)[:MAX_LISTED]
        self.tamper = (self.tamper + other.tamper)[:MAX_LISTED]
        self.rotations = (self.rotations + other.rotations)[:MAX_LISTED]
        self.denied_total += other.denied_total
        self.tamper_total += other.tamper_total
        self.rotations_total += other.rotations_total
        for t in (other.first, other.last):
            if t is not None:
                self.first = t if self.first is None or t < self.first else self.first
                self.last = t if self.last is None or t > self.last else self.last
        for g in other.gaps:
            if len(self.gaps) < MAX_GAPS:
                heapq.heappush(self.gaps, g)
            elif g > self.gaps[0]:
                heapq.heapreplace(self.gaps, g)

    # ------------------------------------------------------------------ reading
    @property
    def loads(self) -> int:
        return sum(self.loads_by_identity.values())

    def largest_gaps(self) -> list[tuple[float, str, str]]:
        return sorted(self.gaps, reverse=True)

    def timeline(self, max_bins: int = 120, by: str = "identity") -> Timeline:
        """Loads per identity (``by="pod"``, ``"node"``: per pod, per node) in at most
        ``max_bins`` equal time bins of whole hours; the same bins whatever ``by``."""
        hourly = {"identity": self.hourly, "pod": self.hourly_pod, "node": self.hourly_node}[by]
        hours = [h for c in self.hourly.values() for h in c]
        marks = [m for m in (*self.denied, *self.tamper)]
        mark_hours = [_hour(t) for m in marks if (t := parse_record_time(m.time)) is not None]
        span = hours + mark_hours
        if not span:
            return Timeline(start=None, bin_hours=1, bins=0, series={})
        lo, hi = min(span), max(span)
        n_hours = hi - lo + 1
        width = max(1, -(-n_hours // max_bins))  # ceil
        bins = -(-n_hours // width)
        series: dict[str, dict[int, int]] = {}
        for ident, counts in sorted(hourly.items()):
            s: dict[int, int] = {}
            for h, c in counts.items():
                b = (h - lo) // width
                s[b] = s.get(b, 0) + c
            series[ident] = s
        start = datetime.fromtimestamp(lo * 3600, UTC)
        return Timeline(start=start, bin_hours=width, bins=bins, series=series)


@dataclass
class Timeline:
    start: datetime | None
    bin_hours: int
    bins: int
    series: dict[str, dict[int, int]]  # identity -> bin -> loads (non-empty bins only)

    def bin_start(self, b: int) -> datetime:
        assert self.start is not None
        return self.start + timedelta(hours=b * self.bin_hours)

    def bin_of(self, t: datetime) -> int:
        assert self.start is not None
        return (_hour(t) - _hour(self.start)) // self.bin_hours

    @property
    def points(self) -> int:
        return sum(len(s) for s in self.series.values())


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
