"""Composable verification policies for model signatures.

A policy decides whether a signature bundle was made by a signer you trust.  Every
leaf policy performs the cryptographic check itself (a policy that passes implies the
DSSE signature verified under the trust material it names), and reports why it
failed otherwise::

    from weightguard.policy import PublicKey, ChainRoot, SigstoreIdentity, AnyOf

    policy = AnyOf(
        PublicKey.from_file("release.pub"),
        SigstoreIdentity("release@example.com", "https://accounts.google.com"),
    )
    policy = PublicKey.from_file("a.pub") & KeyFingerprint("sha256:...")   # AllOf
    policy = PublicKey.from_file("a.pub") | PublicKey.from_file("b.pub")   # AnyOf

Skipping verification needs the explicitly unsafe :class:`UnsafeNoVerification`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightguard.errors import ConfigError, FormatError

if TYPE_CHECKING:
    from weightguard._internal.oms import Evidence

__all__ = [
    "AllOf",
    "AnyOf",
    "ChainRoot",
    "KeyFingerprint",
    "Policy",
    "PolicyResult",
    "PublicKey",
    "SigstoreIdentity",
    "UnsafeNoVerification",
    "trust_policy",
]

_MAX_CHAIN_DEPTH = 8


@dataclass(frozen=True)
class PolicyResult:
    """Outcome of a policy check.

    ``reasons`` says why it failed (empty when ``ok``); ``signer`` describes who signed
    (key fingerprint, certificate subject or Sigstore identity); ``signed_at`` is the
    signing time when known and ``time_source`` where it comes from
    (``transparency-log`` | ``signer-claim`` | ``certificate``).
    """

    ok: bool
    reasons: tuple[str, ...] = ()
    signer: str | None = None
    signed_at: datetime | None = None
    time_source: str | None = None
    unsafe: bool = False


def _fail(*reasons: str) -> PolicyResult:
    return PolicyResult(ok=False, reasons=tuple(reasons))


class Policy(abc.ABC):
    """Base class; combine with ``&`` (all of) and ``|`` (any of)."""

    @abc.abstractmethod
    def check(self, evidence: Evidence) -> PolicyResult:
        """Evaluate against a parsed bundle (``weightguard._internal.oms.Evidence``)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Short human description, used in messages."""

    def __and__(self, other: Policy) -> AllOf:
        return AllOf(self, other)

    def __or__(self, other: Policy) -> AnyOf:
        return AnyOf(self, other)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def _read_pem(value: bytes | str | os.PathLike[str], what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode("ascii")
    p = Path(value)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror}") from exc
    if len(data) > 1 << 20:
        raise ConfigError(f"{what} {p} is larger than 1 MiB; is it really a PEM file?")
    return data


def _load_certs(pem: bytes, what: str) -> list[Any]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"{what}: no PEM certificate found ({exc})") from exc
    return certs


class PublicKey(Policy):
    """Signed by the EC private key paired with this public key (PEM SubjectPublicKeyInfo).

    Matches key-signed bundles (the ``publicKey.hint`` must match when present) and
    certificate bundles whose leaf certificate holds this key.
    """

    def __init__(self, pem: bytes | str, *, label: str | None = None) -> None:
        from cryptography.hazmat.primitives import serialization

        from weightguard._internal.oms import ec_hash, key_fingerprint

        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise ConfigError(
                "public key is not a PEM SubjectPublicKeyInfo",
                hint="pass the signer's public key (-----BEGIN PUBLIC KEY-----)",
            ) from exc
        try:
            ec_hash(key, "public key")
        except FormatError as exc:
            raise ConfigError(exc.message, hint=exc.hint) from None
        self.key = key
        self.fingerprint = key_fingerprint(key)
        self.label = label

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PublicKey:
        return cls(_read_pem(path, "public key file"), label=str(path))

    def describe(self) -> str:
        from weightguard._internal.oms import curve_label

        lab = f" ({self.label})" if self.label else ""
        return f"EC {curve_label(self.key)} key {self.fingerprint}{lab}"

    def check(self, evidence: Evidence) -> PolicyResult:
        b = evidence.bundle
        if b.kind == "sigstore":
            return _fail(f"{self.describe()}: bundle is a Sigstore keyless signature")
        if b.kind == "x509":
            try:
                leaf_key = evidence.leaf_certificate().public_key()
            except FormatError as exc:
                return _fail(exc.message)
            from weightguard._internal.oms import key_fingerprint

            if key_fingerprint(leaf_key) != self.fingerprint:
                return _fail(f"{self.describe()}: the leaf certificate holds a different key")
        reason = evidence.verify_with_key(self.key, check_hint=b.kind == "key")
        if reason:
            return _fail(reason)
        try:
            claimed = evidence.claimed_signing_time()
        except FormatError as exc:
            return _fail(exc.message)
        return PolicyResult(
            ok=True,
            signer=self.describe(),
            signed_at=claimed,
            time_source="signer-claim" if claimed else None,
        )


class KeyFingerprint(Policy):
    """The signing key (of a certificate bundle's leaf) has this fingerprint.

    Fingerprint: ``sha256:<hex>`` of the DER SubjectPublicKeyInfo (colons allowed).
    Key-signed bundles carry no key, so combine this with :class:`PublicKey` for them.
    """

    def __init__(self, fingerprint: str) -> None:
        fp = fingerprint.strip().lower().replace(":", "")
        if fp.startswith("sha256"):
            fp = fp[len("sha256") :]
        if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            raise ConfigError(
                f"key fingerprint {fingerprint!r} is not sha256:<64 hex characters>",
                hint="see `weightguard verify --json` output for the signer's fingerprint",
            )
        self.fingerprint = "sha256:" + fp

    def describe(self) -> str:
        return f"key fingerprint {self.fingerprint}"

    def check(self, evidence: Evidence) -> PolicyResult:
        from weightguard._internal.oms import key_fingerprint

        b = evidence.bundle
        if b.kind == "key":
            return _fail(
                f"{self.describe()}: key-signed bundles do not carry the key; "
                "use PublicKey(pem) for them"
            )
        try:
            key = evidence.leaf_certificate().public_key()
        except FormatError as exc:
            return _fail(exc.message)
        if key_fingerprint(key) != self.fingerprint:
            return _fail(f"{self.describe()}: signing key is {key_fingerprint(key)}")
        reason = evidence.verify_with_key(key, check_hint=False)
        if reason:
            return _fail(reason)
        return PolicyResult(ok=True, signer=f"key {self.fingerprint}")


def _is_ca(cert: Any) -> bool:
    from cryptography import x509

    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def _may_sign_certs(cert: Any) -> bool:
    from cryptography import x509

    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(ku.key_cert_sign)


def _may_sign_code(cert: Any) -> bool:
    """model-signing's rule: KeyUsage digitalSignature, or EKU codeSigning."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        if cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        return ExtendedKeyUsageOID.CODE_SIGNING in eku
    except x509.ExtensionNotFound:
        return False


def _valid_at(cert: Any, when: datetime) -> bool:
    return bool(cert.not_valid_before_utc <= when <= cert.not_valid_after_utc)


def _subject(cert: Any) -> str:
    return str(cert.subject.rfc4514_string()) or "<empty subject>"


class ChainRoot(Policy):
    """Signed by a certificate that chains to one of these root CAs.

    ``ca_pem``: PEM (bytes, text or file path) with one or more trusted roots;
    ``intermediates``: extra untrusted intermediates (PEM) used to build the path, in
    addition to those the bundle carries.  The chain is checked at the signing time:
    weightguard bundles record it (``predicate.weightguard.signed_at``, which must lie in
    the leaf's validity and not in the future); for other bundles, as model-signing
    does, at the leaf's ``notBefore``.  Every issuer must be a CA allowed to sign
    certificates; the leaf must allow digitalSignature or codeSigning.
    """

    def __init__(
        self,
        ca_pem: bytes | str | os.PathLike[str],
        intermediates: Iterable[bytes | str | os.PathLike[str]] = (),
    ) -> None:
        self.roots = _load_certs(_read_pem(ca_pem, "CA certificate file"), "CA certificates")
        self.intermediates = [
            c
            for item in intermediates
            for c in _load_certs(_read_pem(item, "intermediate file"), "intermediates")
        ]

    def describe(self) -> str:
        return "certificate chain to " + ", ".join(_subject(r) for r in self.roots)

    def _build_path(self, leaf: Any, pool: list[Any], when: datetime) -> list[Any] | str:
        from cryptography.exceptions import InvalidSignature

        def issued_by(child: Any, parent: Any) -> bool:
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                return False
            return True

        path = [leaf]
        current = leaf
        used: set[bytes] = set()
        for _ in range(_MAX_CHAIN_DEPTH):
            for root in self.roots:
                if issued_by(current, root):
                    if not _valid_at(root, when):
                        return f"root {_subject(root)} is not valid at {when:%Y-%m-%dT%H:%M:%SZ}"
                    return [*path, root]
            nxt = None
            for cand in pool:
                fp = cand.fingerprint(_sha256())
                if fp in used or not issued_by(current, cand):
                    continue
                if not (_is_ca(cand) and _may_sign_certs(cand)):
                    return f"issuer {_subject(cand)} is not a CA allowed to sign certificates"
                if not _valid_at(cand, when):
                    return (
                        f"intermediate {_subject(cand)} is not valid at {when:%Y-%m-%dT%H:%M:%SZ}"
                    )
                used.add(fp)
                nxt = cand
                break
            if nxt is None:
                return (
                    f"no path from {_subject(leaf)} to a trusted root "
                    f"({', '.join(_subject(r) for r in self.roots)})"
                )
            path.append(nxt)
            current = nxt
        return "certificate chain is too long"

    def check(self, evidence: Evidence) -> PolicyResult:
        b = evidence.bundle
        if b.kind != "x509":
            return _fail(f"{self.describe()}: bundle is not signed with an X.509 chain")
        try:
            leaf = evidence.leaf_certificate()
            pool = evidence.chain_certificates() + self.intermediates
        except FormatError as exc:
            return _fail(exc.message)
        reason = evidence.verify_with_key(leaf.public_key(), check_hint=False)
        if reason:
            return _fail(reason)
        try:
            claimed = evidence.claimed_signing_time()
        except FormatError as exc:
            return _fail(exc.message)
        if claimed is not None:
            when, source = claimed, "signer-claim"
            if claimed > datetime.now(UTC):
                return _fail(
                    f"{evidence.path}: signed_at {claimed:%Y-%m-%dT%H:%M:%SZ} is in the future"
                )
        else:
            when, source = leaf.not_valid_before_utc, "certificate"
        if when < leaf.not_valid_before_utc:
            return _fail(
                f"leaf certificate {_subject(leaf)} was not yet valid at signing time "
                f"{when:%Y-%m-%dT%H:%M:%SZ} (valid from {leaf.not_valid_before_utc:%Y-%m-%d})"
            )
        if when > leaf.not_valid_after_utc:
            return _fail(
                f"leaf certificate {_subject(leaf)} had expired at signing time "
                f"{when:%Y-%m-%dT%H:%M:%SZ} (valid until {leaf.not_valid_after_utc:%Y-%m-%d})"
            )
        if not _may_sign_code(leaf):
            return _fail(
                f"leaf certificate {_subject(leaf)} allows neither digitalSignature nor codeSigning"
            )
        path = self._build_path(leaf, pool, when)
        if isinstance(path, str):
            return _fail(f"{self.describe()}: {path}")
        return PolicyResult(
            ok=True,
            signer=f"certificate {_subject(leaf)} (issued by {_subject(path[1])})",
            signed_at=claimed,
            time_source=source if claimed else None,
        )


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def production_trusted_root() -> Any:
    """The Sigstore production trusted root shipped inside the ``sigstore`` package."""
    from importlib import resources

    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot import v1 as trustroot_v1

    raw = (
        resources.files("sigstore._store")
        .joinpath("https%3A%2F%2Ftuf-repo-cdn.sigstore.dev", "trusted_root.json")
        .read_bytes()
    )
    return TrustedRoot(trustroot_v1.TrustedRoot.from_json(raw))


class SigstoreIdentity(Policy):
    """Sigstore keyless: certificate identity (SAN) and OIDC issuer must match exactly.

    ``offline=True`` (default) uses the production trusted root shipped with the
    ``sigstore`` package (no network); ``trust_root`` names a trusted_root.json file
    instead; ``offline=False`` refreshes the production root over TUF.
    """

    def __init__(
        self,
        identity: str,
        issuer: str,
        *,
        trust_root: str | os.PathLike[str] | None = None,
        offline: bool = True,
    ) -> None:
        if not identity or not issuer:
            raise ConfigError("SigstoreIdentity needs both an identity and an issuer")
        self.identity = identity
        self.issuer = issuer
        self.trust_root = trust_root
        self.offline = offline
        self._root: Any = None

    def describe(self) -> str:
        return f"Sigstore identity {self.identity} (issuer {self.issuer})"

    def _trusted_root(self) -> Any:
        if self._root is None:
            try:
                from sigstore.errors import Error as SigstoreError
                from sigstore.models import ClientTrustConfig, TrustedRoot
            except ImportError as exc:  # pragma: no cover - sigstore is a dependency
                from weightguard.errors import DependencyMissing

                raise DependencyMissing("Sigstore verification needs the sigstore package") from exc
            try:
                if self.trust_root is not None:
                    self._root = TrustedRoot.from_file(os.fspath(self.trust_root))
                elif self.offline:
                    self._root = production_trusted_root()
                else:
                    self._root = ClientTrustConfig.production().trusted_root
            except (SigstoreError, OSError, ValueError) as exc:
                raise ConfigError(f"cannot load the Sigstore trusted root: {exc}") from exc
        return self._root

    def check(self, evidence: Evidence) -> PolicyResult:
        if evidence.bundle.kind != "sigstore":
            return _fail(f"{self.describe()}: bundle is not a Sigstore keyless signature")
        try:
            _cert, when, source = evidence.verify_sigstore(
                self.identity, self.issuer, self._trusted_root()
            )
        except FormatError as exc:
            return _fail(exc.message)
        return PolicyResult(
            ok=True,
            signer=f"{self.identity} (issuer {self.issuer})",
            signed_at=when,
            time_source=source if when else None,
        )


class AllOf(Policy):
    """Every policy must pass."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigError("AllOf needs at least one policy")
        self.policies: Sequence[Policy] = policies

    def describe(self) -> str:
        return "all of (" + "; ".join(p.describe() for p in self.policies) + ")"

    def check(self, evidence: Evidence) -> PolicyResult:
        results = [p.check(evidence) for p in self.policies]
        failed = [r for r in results if not r.ok]
        if failed:
            return _fail(*(reason for r in failed for reason in r.reasons))
        timed = [r for r in results if r.signed_at is not None]
        timed.sort(key=lambda r: r.time_source != "transparency-log")
        signers = list(dict.fromkeys(r.signer for r in results if r.signer))
        return PolicyResult(
            ok=True,
            signer="; ".join(signers) or None,
            signed_at=timed[0].signed_at if timed else None,
            time_source=timed[0].time_source if timed else None,
            unsafe=any(r.unsafe for r in results),
        )


class AnyOf(Policy):
    """At least one policy must pass (the first that passes describes the signer)."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigError("AnyOf needs at least one policy")
        self.policies: Sequence[Policy] = policies

    def describe(self) -> str:
        return "any of (" + "; ".join(p.describe() for p in self.policies) + ")"

    def check(self, evidence: Evidence) -> PolicyResult:
        reasons: list[str] = []
        for p in self.policies:
            r = p.check(evidence)
            if r.ok:
                return r
            reasons.extend(r.reasons)
        return _fail(*reasons)


class UnsafeNoVerification(Policy):
    """UNSAFE: accept the bundle without checking who signed it.

    Integrity of the files against the (unauthenticated) statement is still checked,
    so this only detects accidental corruption, never tampering.
    """

    def describe(self) -> str:
        return "UNSAFE: no signature verification"

    def check(self, evidence: Evidence) -> PolicyResult:
        return PolicyResult(ok=True, signer="UNVERIFIED (UnsafeNoVerification)", unsafe=True)


def trust_policy(
    *,
    public_keys: Sequence[str | os.PathLike[str]] = (),
    chain: Sequence[str | os.PathLike[str]] = (),
    vault_key: str | None = None,
    identity: str | None = None,
    issuer: str | None = None,
    trust_root: str | os.PathLike[str] | None = None,
    offline: bool = True,
    unsafe: bool = False,
) -> Policy:
    """One policy from trust anchors, as the CLI takes them: any of the anchors given.

    ``chain`` is a root CA followed by intermediates.  ``unsafe`` excludes every anchor.
    """
    policies: list[Policy] = [PublicKey.from_file(k) for k in public_keys]
    if chain:
        policies.append(ChainRoot(chain[0], chain[1:]))
    if vault_key:
        from weightguard.signing import vault_key_policy

        policies.append(vault_key_policy(vault_key))
    if identity or issuer:
        if not (identity and issuer):
            raise ConfigError("a Sigstore identity and issuer go together", hint="give both")
        policies.append(SigstoreIdentity(identity, issuer, trust_root=trust_root, offline=offline))
    if unsafe:
        if policies:
            raise ConfigError(
                "the unsafe no-verification option excludes every trust anchor",
                hint="drop it, or drop the anchors",
            )
        return UnsafeNoVerification()
    if not policies:
        raise ConfigError(
            "no trust anchor given",
            hint="give a trust anchor: a signer public key (--trust-key), a CA chain "
            "(--trust-chain), "
            "a Vault Transit key (--vault-key) or a Sigstore --identity and --issuer",
        )
    return policies[0] if len(policies) == 1 else AnyOf(*policies)
