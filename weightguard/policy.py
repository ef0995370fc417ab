"""Composable verification policies for model signatures: they name trust, then narrow.

A policy does two things, in this order (see :mod:`weightguard.verifying`; the data they
exchange is in :mod:`weightguard.trust`):
``trust_anchors()`` names the trust material the caller configured (public keys, CA
roots, Sigstore identities), with which the verifier proves the signature
cryptographically; then ``check(verified)`` narrows: it sees only what was proven and
can refuse it, never accept what was not::

    from weightguard.policy import PublicKey, ChainRoot, SigstoreIdentity, AnyOf

    policy = AnyOf(
        PublicKey.from_file("release.pub"),
        SigstoreIdentity("release@example.com", "https://accounts.google.com"),
    )
    policy = PublicKey.from_file("a.pub") & KeyFingerprint("sha256:...")   # AllOf
    policy = PublicKey.from_file("a.pub") | PublicKey.from_file("b.pub")   # AnyOf

A user-written policy that names no anchor proves nothing: the verifier refuses the
bundle before the policy runs.  Skipping verification needs the explicitly unsafe
:class:`UnsafeNoVerification`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard.errors import ConfigError, FormatError
from weightguard.trust import (
    ChainAnchor,
    FingerprintAnchor,
    KeyAnchor,
    Proof,
    SigstoreAnchor,
    TrustAnchor,
    UnsafeAnchor,
    VerifiedSignature,
)

__all__ = [
    "AllOf",
    "AnyOf",
    "CertificateIdentity",
    "ChainRoot",
    "CoSigned",
    "KeyFingerprint",
    "Policy",
    "PolicyResult",
    "PublicKey",
    "SigstoreIdentity",
    "UnsafeNoVerification",
    "trust_policy",
    "vault_key_policy",
]


@dataclass(frozen=True)
class PolicyResult:
    """Outcome of a policy's narrowing.

    ``reasons`` says why it refused (empty when ``ok``); ``signer`` describes who signed
    (key fingerprint, certificate subject or Sigstore identity); ``signed_at`` /
    ``time_source`` repeat the proven signing time.  Informative only: the manifest
    takes signer and time from the verifier's proofs, never from a policy.
    """

    ok: bool
    reasons: tuple[str, ...] = ()
    signer: str | None = None
    signed_at: datetime | None = None
    time_source: str | None = None
    unsafe: bool = False


def _fail(*reasons: str) -> PolicyResult:
    return PolicyResult(ok=False, reasons=tuple(reasons))


def _passed(proof: Proof) -> PolicyResult:
    return PolicyResult(
        ok=True, signer=proof.signer, signed_at=proof.signed_at, time_source=proof.time_source
    )


class Policy(abc.ABC):
    """Base class; combine with ``&`` (all of) and ``|`` (any of).

    Subclasses that add a rule (an extra constraint on the proven signer) override
    :meth:`check` and keep the default :meth:`trust_anchors` (none): combined with a
    built-in policy by ``&``, they narrow what its anchor proved.
    """

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        """The trust material this policy contributes to the verifier (default: none)."""
        return ()

    @abc.abstractmethod
    def check(self, verified: VerifiedSignature) -> PolicyResult:
        """Narrow: accept or refuse what the verifier proved (``verified.proofs``)."""

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


def _no_proof(policy: Policy, verified: VerifiedSignature) -> PolicyResult:
    why = verified.failure_of(policy.trust_anchors())
    if why:
        return _fail(*why)
    if verified.unsafe:
        return _fail(f"{policy.describe()}: the signature was not verified")
    return _fail(f"{policy.describe()}: not what the signature was verified with")


class PublicKey(Policy):
    """Signed by the EC private key paired with this public key (PEM SubjectPublicKeyInfo).

    Matches key-signed bundles (the ``publicKey.hint`` must match when present) and
    certificate bundles whose leaf certificate holds this key.
    """

    def __init__(self, pem: bytes | str, *, label: str | None = None) -> None:
        from cryptography.hazmat.primitives import serialization

        from weightguard._internal.signing.signers.base import ec_hash, key_fingerprint

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
        from weightguard._internal.signing.signers.base import curve_label

        lab = f" ({self.label})" if self.label else ""
        return f"EC {curve_label(self.key)} key {self.fingerprint}{lab}"

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return (KeyAnchor(self.key, self.fingerprint, self.describe()),)

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        for p in verified.proofs:
            if isinstance(p.anchor, KeyAnchor) and p.key_fingerprint == self.fingerprint:
                return _passed(p)
        return _no_proof(self, verified)


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

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return (FingerprintAnchor(self.fingerprint, self.describe()),)

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        for p in verified.proofs:
            if p.key_fingerprint == self.fingerprint:
                return PolicyResult(
                    ok=True,
                    signer=f"key {self.fingerprint}",
                    signed_at=p.signed_at,
                    time_source=p.time_source,
                )
        return _no_proof(self, verified)


def _subject(cert: Any) -> str:
    from weightguard._internal.signing.x509path import subject_of

    return subject_of(cert)


def _cert_fp(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import hashes

    return bytes(cert.fingerprint(hashes.SHA256()))


class ChainRoot(Policy):
    """Signed by a certificate that chains to one of these root CAs.

    ``ca_pem``: PEM (bytes, text or file path) with one or more trusted roots;
    ``intermediates``: extra untrusted intermediates (PEM) used to build the path, in
    addition to those the bundle carries.  Only a self-signed certificate of
    ``ca_pem`` is a trust anchor (as in model_signing / OpenSSL); an intermediate CA
    in it only helps build the path, unless ``allow_intermediate_anchor=True`` makes
    it an anchor too.  The path is validated by
    ``cryptography.x509.verification`` (RFC 5280: path length, name constraints,
    critical extensions, issuers' key usage) at the signing time: weightguard bundles
    record it (``predicate.weightguard.signed_at``, which must lie in the leaf's
    validity and not in the future); for other bundles, as model-signing does, at the
    leaf's ``notBefore``.  The leaf must allow digitalSignature or codeSigning.
    """

    def __init__(
        self,
        ca_pem: bytes | str | os.PathLike[str],
        intermediates: Iterable[bytes | str | os.PathLike[str]] = (),
        *,
        allow_intermediate_anchor: bool = False,
    ) -> None:
        self.allow_intermediate_anchor = allow_intermediate_anchor
        self.roots = _load_certs(_read_pem(ca_pem, "CA certificate file"), "CA certificates")
        self.intermediates = [
            c
            for item in intermediates
            for c in _load_certs(_read_pem(item, "intermediate file"), "intermediates")
        ]

    def describe(self) -> str:
        return "certificate chain to " + ", ".join(_subject(r) for r in self.roots)

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return (
            ChainAnchor(
                tuple(self.roots),
                tuple(self.intermediates),
                self.describe(),
                allow_intermediate_anchor=self.allow_intermediate_anchor,
            ),
        )

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        mine = {_cert_fp(r) for r in self.roots}
        for p in verified.proofs:
            if isinstance(p.anchor, ChainAnchor) and p.chain and _cert_fp(p.chain[-1]) in mine:
                return _passed(p)
        return _no_proof(self, verified)


class CertificateIdentity(Policy):
    """Narrows a certificate chain: the validated leaf names this identity.

    ``identity`` must equal the leaf's subject (RFC 4514, e.g. ``CN=release,O=Example``)
    or one of its subjectAltName values (e-mail, DNS name or URI).  It names no trust
    anchor of its own: combine it with :class:`ChainRoot`
    (``ChainRoot("root.crt") & CertificateIdentity("release@example.com")``).
    """

    def __init__(self, identity: str) -> None:
        if not identity:
            raise ConfigError("CertificateIdentity needs an identity")
        self.identity = identity

    def describe(self) -> str:
        return f"certificate identity {self.identity}"

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        from cryptography import x509

        seen: list[str] = []
        for p in verified.proofs:
            if not (isinstance(p.anchor, ChainAnchor) and p.chain):
                continue
            leaf = p.chain[0]
            names = [_subject(leaf)]
            try:
                san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                for kind in (x509.RFC822Name, x509.DNSName, x509.UniformResourceIdentifier):
                    names.extend(str(v) for v in san.get_values_for_type(kind))
            except x509.ExtensionNotFound:
                pass
            if self.identity in names:
                return _passed(p)
            seen.extend(names)
        if not seen:
            return _fail(f"{self.describe()}: no certificate chain was verified")
        return _fail(f"{self.describe()}: the verified leaf names {', '.join(seen)}")


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

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return (SigstoreAnchor(self.identity, self.issuer, self._trusted_root, self.describe()),)

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        for p in verified.proofs:
            a = p.anchor
            if (
                isinstance(a, SigstoreAnchor)
                and a.identity == self.identity
                and a.issuer == self.issuer
            ):
                return _passed(p)
        return _no_proof(self, verified)


def _union(policies: Sequence[Policy]) -> tuple[TrustAnchor, ...]:
    out: list[TrustAnchor] = []
    for p in policies:
        out.extend(p.trust_anchors())
    return tuple(out)


class AllOf(Policy):
    """Every policy must pass."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigError("AllOf needs at least one policy")
        self.policies: Sequence[Policy] = policies

    def describe(self) -> str:
        return "all of (" + "; ".join(p.describe() for p in self.policies) + ")"

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return _union(self.policies)

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        results = [p.check(verified) for p in self.policies]
        failed = [r for r in results if not r.ok]
        if failed:
            return _fail(*(reason for r in failed for reason in r.reasons))
        signers = list(dict.fromkeys(r.signer for r in results if r.signer))
        return PolicyResult(ok=True, signer="; ".join(signers) or None)


class AnyOf(Policy):
    """At least one policy must pass (the first that passes describes the signer)."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigError("AnyOf needs at least one policy")
        self.policies: Sequence[Policy] = policies

    def describe(self) -> str:
        return "any of (" + "; ".join(p.describe() for p in self.policies) + ")"

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return _union(self.policies)

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        reasons: list[str] = []
        for p in self.policies:
            r = p.check(verified)
            if r.ok:
                return r
            reasons.extend(r.reasons)
        return _fail(*reasons)


class CoSigned(Policy):
    """Several signatures on one release: each policy satisfied by a bundle of its own.

    A release carries its primary bundle (``model.sig``, what ``model_signing verify``
    checks) and co-signatures beside it in ``model.sig.d/<name>.sig`` (``weightguard
    sign --co-sign NAME``; for a single file ``<file>.sig`` and ``<file>.sig.d/``).
    :func:`weightguard.signing.verify_bundle` (and so ``weightguard verify`` and the
    loader) gives every policy here a different bundle that it accepts, or refuses;
    and every bundle used must sign the same files with the same digests::

        policy = CoSigned(PublicKey.from_file("release.pub"),
                          PublicKey.from_file("security.pub"))

    One bundle carries one signature: applied to a single bundle (``check``) it
    refuses unless it names only one policy.
    """

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigError("CoSigned needs at least one policy")
        if any(isinstance(p, CoSigned | UnsafeNoVerification) for p in policies):
            raise ConfigError("CoSigned takes signer policies (not CoSigned or unsafe ones)")
        self.policies: Sequence[Policy] = policies

    def describe(self) -> str:
        return (
            "each of (" + "; ".join(p.describe() for p in self.policies) + "), by a "
            "signature of its own"
        )

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return _union(self.policies)

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        if len(self.policies) == 1:
            return self.policies[0].check(verified)
        return _fail(
            f"{len(self.policies)} signatures are required ({self.describe()}) and one "
            "bundle carries one; verify the release with weightguard.signing.verify_bundle"
        )


class UnsafeNoVerification(Policy):
    """UNSAFE: accept the bundle without checking who signed it.

    Integrity of the files against the (unauthenticated) statement is still checked,
    so this only detects accidental corruption, never tampering.
    """

    def describe(self) -> str:
        return "UNSAFE: no signature verification"

    def trust_anchors(self) -> Sequence[TrustAnchor]:
        return (UnsafeAnchor(),)

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        return PolicyResult(ok=True, signer="UNVERIFIED (UnsafeNoVerification)", unsafe=True)


def vault_key_policy(uri: str, *, client: Any = None) -> Policy:
    """A policy accepting signatures by any version of a Transit key (public keys fetched)."""
    from weightguard._internal.signing.signers.vault_transit import vault_public_keys

    keys = [
        PublicKey(pem, label=f"{uri} v{ver}") for ver, pem in vault_public_keys(uri, client=client)
    ]
    return keys[0] if len(keys) == 1 else AnyOf(*keys)


@renamed_keywords(
    public_keys="trust_key",
    chain="trust_chain",
    vault_key="trust_vault_key",
    unsafe="unsafe_no_verification",
)
def trust_policy(
    *,
    trust_key: Sequence[str | os.PathLike[str]] = (),
    trust_chain: Sequence[str | os.PathLike[str]] = (),
    trust_vault_key: str | None = None,
    identity: str | None = None,
    issuer: str | None = None,
    trust_root: str | os.PathLike[str] | None = None,
    offline: bool = True,
    unsafe_no_verification: bool = False,
    allow_intermediate_anchor: bool = False,
    require_all: bool = False,
) -> Policy:
    """One policy from trust anchors, as the CLI takes them (each keyword spelled as
    its option): any of the anchors given.

    ``trust_key``: signer public key PEM files.  ``trust_chain`` is a root CA followed by
    intermediates; ``allow_intermediate_anchor`` lets its first certificate be an
    intermediate CA.  ``trust_vault_key``: a Vault Transit key URI.
    ``unsafe_no_verification`` excludes every anchor.  ``require_all``: every anchor
    must have signed the release, each with a bundle of its own (:class:`CoSigned`).
    The keywords of the previous release (``public_keys``, ``chain``, ``vault_key``,
    ``unsafe``) work until the next one, with a FutureWarning.
    """
    policies: list[Policy] = [PublicKey.from_file(k) for k in trust_key]
    if trust_chain:
        policies.append(
            ChainRoot(
                trust_chain[0], trust_chain[1:], allow_intermediate_anchor=allow_intermediate_anchor
            )
        )
    if trust_vault_key:
        policies.append(vault_key_policy(trust_vault_key))
    if identity or issuer:
        if not (identity and issuer):
            raise ConfigError("a Sigstore identity and issuer go together", hint="give both")
        policies.append(SigstoreIdentity(identity, issuer, trust_root=trust_root, offline=offline))
    if unsafe_no_verification:
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
            "a Vault Transit key (--trust-vault-key) or a Sigstore --identity and --issuer",
        )
    if require_all:
        if len(policies) < 2:
            raise ConfigError(
                "requiring every signer needs at least two trust anchors",
                hint="name each required signer (--trust-key release.pub --trust-key "
                "security.pub --require-all)",
            )
        return CoSigned(*policies)
    return policies[0] if len(policies) == 1 else AnyOf(*policies)
