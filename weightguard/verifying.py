"""The verifier proves; the policy narrows.

A bundle is accepted in this order, written down once (:func:`verify_signature` runs
steps 1 to 5; ``signing.verify_bundle`` then runs 6 to 8 on the statement)::

    1. Parse the bundle (structure and sizes bounded; nothing in it is trusted yet).
    2. Collect the trust material the caller configured: the policy's
       ``trust_anchors()`` (public keys, pinned key fingerprints, X.509 roots and
       intermediates, Sigstore identities with their trusted root).  A policy naming
       none proves nothing and is refused, unless it is ``UnsafeNoVerification``.
    3. Prove: the DSSE signature must verify cryptographically under at least one
       anchor -- a key-signed bundle with a configured public key; a certificate bundle
       with its leaf's key after the leaf chains to a configured self-signed root
       (an intermediate CA only with ``allow_intermediate_anchor``) by RFC 5280 path
       validation (``cryptography.x509.verification``: path length, name constraints,
       critical extensions, issuer key usage) and the leaf may sign code; a Sigstore
       bundle by sigstore-python (Fulcio chain, SCT, transparency log, identity).
    4. Establish the signing time from what step 3 proved: the transparency log's
       integrated time, else the signer's signed claim (never in the future, inside
       the leaf's validity), else the leaf's notBefore (as model-signing does); the
       chain of step 3 is validated at that time.
    5. Narrow: the policy checks the proven facts (:class:`VerifiedSignature`).  It
       can refuse what was proven; it cannot accept what was not, because it only
       runs after step 3 succeeded and only sees proofs.
    6. Parse the signed statement (only the verified payload is parsed).
    7. Coverage: every weight file signed, nothing signed missing, sizes as signed.
    8. Content: every byte against the signed chunk digests and the OMS resource
       digests (or, for the loader, each chunk as it streams).

``UnsafeNoVerification`` is the one way past step 3: it yields a result marked
``unsafe`` whose signer is ``UNVERIFIED``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from weightguard.errors import FormatError, PolicyError

if TYPE_CHECKING:
    from weightguard._internal.signing.oms import Bundle, Evidence

__all__ = [
    "ChainAnchor",
    "FingerprintAnchor",
    "KeyAnchor",
    "NarrowingResult",
    "Proof",
    "SigstoreAnchor",
    "TrustAnchor",
    "UnsafeAnchor",
    "VerifiedSignature",
    "Verifier",
    "verify_signature",
]


# ------------------------------------------------------------------ trust material


@dataclass(frozen=True)
class KeyAnchor:
    """A trusted EC public key (key-signed bundles, or a certificate leaf holding it)."""

    key: Any
    fingerprint: str
    description: str


@dataclass(frozen=True)
class FingerprintAnchor:
    """A pinned key fingerprint: the bundle's leaf certificate must hold that key."""

    fingerprint: str
    description: str


@dataclass(frozen=True)
class ChainAnchor:
    """Trusted X.509 roots, plus untrusted intermediates to build the path with."""

    roots: tuple[Any, ...]
    intermediates: tuple[Any, ...]
    description: str
    # A root that is not self-signed (an intermediate CA) ends a path only if allowed.
    allow_intermediate_anchor: bool = False


@dataclass(frozen=True)
class SigstoreAnchor:
    """A Sigstore identity and OIDC issuer; ``trusted_root()`` loads the root of trust."""

    identity: str
    issuer: str
    trusted_root: Callable[[], Any] = field(compare=False)
    description: str = ""


@dataclass(frozen=True)
class UnsafeAnchor:
    """No trust: the caller explicitly skips signature verification."""


TrustAnchor = KeyAnchor | FingerprintAnchor | ChainAnchor | SigstoreAnchor | UnsafeAnchor


@dataclass(frozen=True)
class Proof:
    """What one anchor proved about the bundle's signature.

    ``key_fingerprint``: the key the DSSE signature verified with; ``chain``: the
    validated path ``[leaf, ..., root]`` (certificate bundles under a
    :class:`ChainAnchor`); ``signed_at`` / ``time_source``: the established signing
    time (``transparency-log`` | ``signer-claim`` | ``certificate``).
    """

    anchor: TrustAnchor
    signer: str
    key_fingerprint: str | None
    chain: tuple[Any, ...] = ()
    signed_at: datetime | None = None
    time_source: str | None = None


@dataclass(frozen=True)
class VerifiedSignature:
    """The verifier's output and the only thing a policy sees.

    ``proofs`` is never empty unless ``unsafe`` (``UnsafeNoVerification``).
    ``failures`` says, per anchor that proved nothing, why (for messages);
    ``bundle`` / ``path`` are there for messages too.  Everything a policy may rely
    on is in ``proofs``.
    """

    bundle: Bundle
    path: str
    proofs: tuple[Proof, ...]
    unsafe: bool = False
    failures: tuple[tuple[TrustAnchor, str], ...] = ()

    def failure_of(self, anchors: Iterable[TrustAnchor]) -> list[str]:
        """Why these anchors proved nothing."""
        wanted = list(anchors)
        return [reason for a, reason in self.failures if a in wanted]


@dataclass(frozen=True)
class NarrowingResult:
    """What :func:`verify_signature` returns: the proofs and the policy's verdict."""

    verified: VerifiedSignature
    signer: str
    signed_at: datetime | None
    time_source: str | None
    unsafe: bool


class _Narrowing(Protocol):
    """What the verifier needs of a policy (``weightguard.policy.Policy``)."""

    def trust_anchors(self) -> Sequence[TrustAnchor]: ...

    def check(self, verified: VerifiedSignature) -> Any: ...

    def describe(self) -> str: ...


# ------------------------------------------------------------------ the verifier


def _subject(cert: Any) -> str:
    from weightguard._internal.signing.x509path import subject_of

    return subject_of(cert)


class Verifier:
    """Proves a bundle's signature under trust anchors (steps 1 to 4 above)."""

    def __init__(self, anchors: Iterable[TrustAnchor]) -> None:
        self.anchors = tuple(anchors)

    def verify(self, evidence: Evidence) -> VerifiedSignature:
        """Every anchor that proves the signature; refuses when none does."""
        proofs: list[Proof] = []
        failures: list[tuple[TrustAnchor, str]] = []
        proving = [a for a in self.anchors if not isinstance(a, UnsafeAnchor)]
        for anchor in proving:
            got = self._prove(anchor, evidence)
            if isinstance(got, Proof):
                proofs.append(got)
            else:
                failures.append((anchor, got))
        reasons = [r for _, r in failures]
        if proofs:
            return VerifiedSignature(
                evidence.bundle, evidence.path, tuple(proofs), failures=tuple(failures)
            )
        if any(isinstance(a, UnsafeAnchor) for a in self.anchors):
            return VerifiedSignature(
                evidence.bundle, evidence.path, (), unsafe=True, failures=tuple(failures)
            )
        if not proving:
            reasons.append(
                "the policy names no trust anchor (public key, key fingerprint, CA root "
                "or Sigstore identity): a policy only narrows what a trust anchor proved"
            )
        raise PolicyError(
            f"signature {evidence.path} does not satisfy the policy: "
            + "; ".join(dict.fromkeys(reasons))
        )

    def _prove(self, anchor: TrustAnchor, ev: Evidence) -> Proof | str:
        try:
            if isinstance(anchor, KeyAnchor):
                return self._prove_key(anchor, ev)
            if isinstance(anchor, FingerprintAnchor):
                return self._prove_fingerprint(anchor, ev)
            if isinstance(anchor, ChainAnchor):
                return self._prove_chain(anchor, ev)
            if isinstance(anchor, SigstoreAnchor):
                return self._prove_sigstore(anchor, ev)
        except FormatError as exc:
            return exc.message
        return f"unknown trust anchor {type(anchor).__name__}"

    @staticmethod
    def _prove_key(anchor: KeyAnchor, ev: Evidence) -> Proof | str:
        from weightguard._internal.signing.oms import key_fingerprint

        kind = ev.bundle.kind
        if kind == "sigstore":
            return f"{anchor.description}: bundle is a Sigstore keyless signature"
        if kind == "x509" and key_fingerprint(ev.leaf_certificate().public_key()) != (
            anchor.fingerprint
        ):
            return f"{anchor.description}: the leaf certificate holds a different key"
        reason = ev.verify_with_key(anchor.key, check_hint=kind == "key")
        if reason:
            return reason
        claimed = ev.claimed_signing_time()
        return Proof(
            anchor,
            anchor.description,
            anchor.fingerprint,
            signed_at=claimed,
            time_source="signer-claim" if claimed else None,
        )

    @staticmethod
    def _prove_fingerprint(anchor: FingerprintAnchor, ev: Evidence) -> Proof | str:
        from weightguard._internal.signing.oms import key_fingerprint

        if ev.bundle.kind == "key":
            return (
                f"{anchor.description}: key-signed bundles do not carry the key; "
                "use PublicKey(pem) for them"
            )
        key = ev.leaf_certificate().public_key()
        if key_fingerprint(key) != anchor.fingerprint:
            return f"{anchor.description}: signing key is {key_fingerprint(key)}"
        reason = ev.verify_with_key(key, check_hint=False)
        if reason:
            return reason
        return Proof(anchor, f"key {anchor.fingerprint}", anchor.fingerprint)

    @staticmethod
    def _prove_chain(anchor: ChainAnchor, ev: Evidence) -> Proof | str:
        from weightguard._internal.signing.oms import key_fingerprint
        from weightguard._internal.signing.x509path import PathError, may_sign_code, verify_path

        if ev.bundle.kind != "x509":
            return f"{anchor.description}: bundle is not signed with an X.509 chain"
        leaf = ev.leaf_certificate()
        pool = ev.chain_certificates() + list(anchor.intermediates)
        # The signature first: only then is the signer's claimed signing time its own.
        reason = ev.verify_with_key(leaf.public_key(), check_hint=False)
        if reason:
            return reason
        claimed = ev.claimed_signing_time()
        if claimed is not None:
            when, source = claimed, "signer-claim"
            if claimed > datetime.now(UTC):
                return f"{ev.path}: signed_at {claimed:%Y-%m-%dT%H:%M:%SZ} is in the future"
        else:
            when, source = leaf.not_valid_before_utc, "certificate"
        if when < leaf.not_valid_before_utc:
            return (
                f"leaf certificate {_subject(leaf)} was not yet valid at signing time "
                f"{when:%Y-%m-%dT%H:%M:%SZ} (valid from {leaf.not_valid_before_utc:%Y-%m-%d})"
            )
        if when > leaf.not_valid_after_utc:
            return (
                f"leaf certificate {_subject(leaf)} had expired at signing time "
                f"{when:%Y-%m-%dT%H:%M:%SZ} (valid until {leaf.not_valid_after_utc:%Y-%m-%d})"
            )
        if not may_sign_code(leaf):
            return (
                f"leaf certificate {_subject(leaf)} allows neither digitalSignature nor codeSigning"
            )
        try:
            chain = verify_path(
                leaf,
                pool,
                anchor.roots,
                when,
                allow_intermediate_anchor=anchor.allow_intermediate_anchor,
            )
        except PathError as exc:
            return (
                f"{anchor.description}: no path from {_subject(leaf)} to a trusted root "
                f"({', '.join(_subject(r) for r in anchor.roots)}): {exc}"
            )
        issuer = _subject(chain[1]) if len(chain) > 1 else _subject(chain[0])
        return Proof(
            anchor,
            f"certificate {_subject(leaf)} (issued by {issuer})",
            key_fingerprint(leaf.public_key()),
            chain=tuple(chain),
            signed_at=claimed,
            time_source=source if claimed else None,
        )

    @staticmethod
    def _prove_sigstore(anchor: SigstoreAnchor, ev: Evidence) -> Proof | str:
        from weightguard._internal.signing.oms import key_fingerprint

        desc = anchor.description or f"Sigstore identity {anchor.identity}"
        if ev.bundle.kind != "sigstore":
            return f"{desc}: bundle is not a Sigstore keyless signature"
        cert, when, source = ev.verify_sigstore(
            anchor.identity, anchor.issuer, anchor.trusted_root()
        )
        return Proof(
            anchor,
            f"{anchor.identity} (issuer {anchor.issuer})",
            key_fingerprint(cert.public_key()),
            signed_at=when,
            time_source=source if when else None,
        )


def _best_time(proofs: Sequence[Proof]) -> tuple[datetime | None, str | None]:
    rank = {"transparency-log": 0, "signer-claim": 1, "certificate": 2}
    timed = sorted(
        (p for p in proofs if p.signed_at is not None),
        key=lambda p: rank.get(p.time_source or "", 3),
    )
    return (timed[0].signed_at, timed[0].time_source) if timed else (None, None)


def verify_signature(bundle: Bundle, policy: _Narrowing, *, path: str) -> NarrowingResult:
    """Steps 2 to 5: prove ``bundle`` under ``policy``'s anchors, then let it narrow."""
    from weightguard._internal.signing.oms import Evidence

    verified = Verifier(policy.trust_anchors()).verify(Evidence(bundle, path=path))
    result = policy.check(verified)
    if not getattr(result, "ok", False):
        reasons = tuple(getattr(result, "reasons", ()) or ("refused",))
        raise PolicyError(f"signature {path} does not satisfy the policy: " + "; ".join(reasons))
    # Who signed and when come from the proofs, never from the policy's own words.
    signed_at, source = _best_time(verified.proofs)
    signer = "; ".join(dict.fromkeys(p.signer for p in verified.proofs))
    if verified.unsafe:
        signer = "UNVERIFIED (UnsafeNoVerification)"
    return NarrowingResult(
        verified,
        signer=signer or "unknown",
        signed_at=signed_at,
        time_source=source,
        unsafe=verified.unsafe,
    )
