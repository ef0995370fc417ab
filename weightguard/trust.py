"""Trust material and what was proven with it: the data the verifier and policies share.

A policy names :data:`TrustAnchor` values (``Policy.trust_anchors()``); the verifier
(:mod:`weightguard.verifying`) proves a bundle's signature under them and hands the
policy a :class:`VerifiedSignature` holding one :class:`Proof` per anchor that proved
it.  Plain data, no behaviour: both sides import it, neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weightguard._internal.signing.oms import Bundle

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
]


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
    """What ``verifying.verify_signature`` returns: the proofs and the policy's verdict."""

    verified: VerifiedSignature
    signer: str
    signed_at: datetime | None
    time_source: str | None
    unsafe: bool
