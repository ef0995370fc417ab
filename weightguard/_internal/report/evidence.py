"""What a report states, as plain records: filled by :mod:`weightguard.report` from
verification results, rendered by :mod:`.render`.  Nothing here verifies anything."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from weightguard._internal.report.access import AccessStats

PASS, ATTENTION, FAIL = "PASS", "ATTENTION", "FAIL"


@dataclass
class Certificate:
    subject: str
    issuer: str
    not_before: str
    not_after: str
    sha256: str


@dataclass
class SignerProof:
    """What one trust anchor proved (weightguard.verifying.Proof, in words)."""

    signer: str
    anchor: str
    key_fingerprint: str | None
    key_algorithm: str | None = None  # "ECDSA P-256"
    chain: list[Certificate] = field(default_factory=list)
    signed_at: str | None = None
    time_source: str | None = None
    tlog: list[dict[str, Any]] = field(default_factory=list)  # Sigstore: verified entries


@dataclass
class CoveredFile:
    name: str
    size: int
    digest_algorithm: str
    digest: str
    chunk_algorithm: str
    chunks: int
    encrypted: bool = False


@dataclass
class Provenance:
    verdict: str  # PASS | FAIL
    summary: str
    policy: str
    signature: str
    bundle_sha256: str | None = None
    kind: str | None = None
    signer: str | None = None
    signed_at: str | None = None
    time_source: str | None = None
    unsafe: bool = False
    proofs: list[SignerProof] = field(default_factory=list)
    files: list[CoveredFile] = field(default_factory=list)
    uncovered: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    model_name: str | None = None
    base_model: tuple[str, str] | None = None  # (name, where it was declared)


@dataclass
class Protected:
    name: str
    aead: str
    provider: str
    key_uri: str
    key_version: int | None
    context: str
    header_encrypted: bool
    chunk_size: int
    complete: bool


@dataclass
class Watermark:
    path: str
    scheme: str
    time: str
    key_ref: str
    commitment: str
    tensors_marked: int | None
    outputs: dict[str, str]
    outputs_match: str  # words: which outputs match the verified digests
    key_check: str | None = None  # words: the given key is / is not the committed one
    # every marked output it lists (at least one) is a verified file, digest equal: the
    # commitment file itself is not signed, so only this ties it to the release
    tied: bool = False


@dataclass
class Protection:
    encrypted: list[Protected] = field(default_factory=list)
    plain_weights: list[str] = field(default_factory=list)
    watermark: Watermark | None = None
    watermark_note: str = ""
    error: str | None = None


@dataclass
class LogVerdict:
    source: str
    verdict: str  # OK | UNSIGNED | BROKEN | UNREADABLE | DUPLICATE | OVERLAP
    text: str
    warnings: list[str] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    summarised: bool = False  # its events are in the statistics

    @property
    def trusted(self) -> bool:
        return self.verdict == "OK"


@dataclass
class Access:
    logs: list[LogVerdict] = field(default_factory=list)
    stats: AccessStats | None = None
    timeline_svg: str | None = None
    timeline_pod_svg: str | None = None
    timeline_node_svg: str | None = None
    timeline_points: dict[str, int] = field(default_factory=dict)
    bin_hours: int = 1
    verdict: str = "NONE"  # NONE | OK | UNSIGNED | UNVERIFIABLE


@dataclass
class Evidence:
    release: str
    generated_at: str
    generator: str
    provenance: Provenance
    protection: Protection
    access: Access
    verdict: str = FAIL
    headline: list[tuple[str, str, str]] = field(default_factory=list)  # (area, level, words)
    answers: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)
    commands: list[tuple[str, str]] = field(default_factory=list)  # (check, command)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        acc = out["access"]
        for k in ("timeline_svg", "timeline_pod_svg", "timeline_node_svg"):
            acc.pop(k, None)
        st = self.access.stats
        acc["stats"] = None if st is None else stats_dict(st)
        return out


def stats_dict(st: AccessStats) -> dict[str, Any]:
    return {
        "events": st.events,
        "loads": st.loads,
        "by_event": dict(st.by_event),
        "by_outcome": dict(st.by_outcome),
        "loads_by_identity": dict(st.loads_by_identity.most_common()),
        "denied_by_identity": dict(st.denied_by_identity.most_common()),
        "loads_by_pod": dict(st.loads_by_pod.most_common()),
        "loads_by_node": dict(st.loads_by_node.most_common()),
        "denied": st.denied_total,
        "tamper": st.tamper_total,
        "rotations": st.rotations_total,
        "first": st.first.isoformat() if st.first else None,
        "last": st.last.isoformat() if st.last else None,
        "largest_gaps": [{"seconds": s, "from": a, "to": b} for s, a, b in st.largest_gaps()],
    }
