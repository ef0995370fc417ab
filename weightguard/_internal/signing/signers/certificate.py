"""Signing with an EC key and its X.509 certificate chain (the bundle carries the chain),
and the proof a verifier runs with trusted roots (:func:`prove_chain`: the signature,
the signing time, then the RFC 5280 path through ``cryptography.x509.verification``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.signing.signers.base import ec_sign, key_fingerprint
from weightguard._internal.signing.signers.ec_key import KeySigner, prove_key
from weightguard.errors import (
    ConfigError,
    FormatError,
)

if TYPE_CHECKING:
    from weightguard._internal.signing.oms import Bundle


class CertificateSigner(KeySigner):
    """EC key + its X.509 certificate + the chain up to (optionally including) the root."""

    def __init__(self, private_key: Any, certificate: Any, chain: Sequence[Any] = ()) -> None:
        super().__init__(private_key)
        from weightguard._internal.signing.x509path import may_sign_code

        if key_fingerprint(certificate.public_key()) != key_fingerprint(self.public_key):
            raise ConfigError(
                "the certificate's public key does not match the private key",
                hint="pass the certificate issued for this key",
            )
        if not may_sign_code(certificate):
            raise ConfigError(
                "the certificate allows neither digitalSignature nor codeSigning",
                hint="issue a certificate with KeyUsage digitalSignature or EKU codeSigning",
            )
        self.certificate = certificate
        self.chain = list(chain)

    @classmethod
    @renamed_keywords(key_path="signing_key", cert_path="signing_cert", chain_paths="signing_chain")
    def from_files(
        cls,
        signing_key: str | os.PathLike[str],
        signing_cert: str | os.PathLike[str],
        signing_chain: Iterable[str | os.PathLike[str]] = (),
        password: bytes | bytearray | str | None = None,
    ) -> CertificateSigner:
        from cryptography import x509

        key = KeySigner.from_file(signing_key, password)._key

        def load(p: str | os.PathLike[str]) -> list[Any]:
            try:
                return list(x509.load_pem_x509_certificates(Path(p).read_bytes()))
            except OSError as exc:
                raise ConfigError(f"cannot read certificate file {p}: {exc.strerror}") from exc
            except ValueError as exc:
                raise ConfigError(f"{p}: no PEM certificate found") from exc

        leaf = load(signing_cert)
        chain = [c for p in signing_chain for c in load(p)]
        return cls(key, leaf[0], leaf[1:] + chain)

    def describe(self) -> str:
        return f"certificate {self.certificate.subject.rfc4514_string()}"

    def check_time(self, when: datetime) -> None:
        c = self.certificate
        if when < c.not_valid_before_utc:
            raise ConfigError(
                f"signing certificate {c.subject.rfc4514_string()} is not valid until "
                f"{c.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
                hint="wait until it is valid or use a current certificate",
            )
        if when > c.not_valid_after_utc:
            raise ConfigError(
                f"signing certificate {c.subject.rfc4514_string()} expired at "
                f"{c.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                hint="renew the certificate",
            )

    def make_bundle(self, payload: bytes) -> bytes:
        from cryptography.hazmat.primitives import serialization

        from weightguard._internal.signing import oms

        sig = ec_sign(self._key, oms.pae(payload))
        ders = [c.public_bytes(serialization.Encoding.DER) for c in [self.certificate, *self.chain]]
        return oms.encode_bundle(payload, sig, certificates=ders)


# ------------------------------------------------------------------------ verification


def leaf_certificate(bundle: Bundle, *, path: str) -> Any:
    """The bundle's first certificate (the signer's), parsed."""
    from cryptography import x509

    if not bundle.certificates:
        raise FormatError(f"{path}: bundle carries no certificate")
    try:
        return x509.load_der_x509_certificate(bundle.certificates[0])
    except ValueError as exc:
        raise FormatError(
            f"{path}: leaf certificate (certificates[0]) is not valid DER X.509"
        ) from exc


def chain_certificates(bundle: Bundle, *, path: str) -> list[Any]:
    """The bundle's other certificates (untrusted: material to build a path with)."""
    from cryptography import x509

    out = []
    for i, der in enumerate(bundle.certificates[1:], start=1):
        try:
            out.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise FormatError(
                f"{path}: x509CertificateChain.certificates[{i}] is not valid DER X.509"
            ) from exc
    return out


@dataclass(frozen=True)
class ChainProof:
    """What :func:`prove_chain` proved: the validated path ``[leaf, ..., root]``, who
    that is in words, and the signer's claimed signing time (None: none claimed)."""

    chain: tuple[Any, ...]
    signer: str
    claimed_at: datetime | None


def prove_chain(
    bundle: Bundle,
    *,
    path: str,
    roots: Sequence[Any],
    intermediates: Sequence[Any],
    allow_intermediate_anchor: bool,
    description: str,
) -> ChainProof:
    """Step 3 and 4 for a certificate bundle under trusted ``roots``; FormatError if not.

    The signature first (only then is the signer's claimed time its own), then the
    signing time (the claim, never in the future, else the leaf's notBefore) inside
    the leaf's validity, the leaf's key usage, then the path at that time.
    """
    from weightguard._internal.signing import oms
    from weightguard._internal.signing.x509path import (
        PathError,
        may_sign_code,
        subject_of,
        verify_path,
    )

    leaf = leaf_certificate(bundle, path=path)
    pool = chain_certificates(bundle, path=path) + list(intermediates)
    prove_key(bundle, leaf.public_key(), path=path, check_hint=False)
    claimed = oms.claimed_signing_time(bundle.payload, path=path)
    if claimed is not None and claimed > datetime.now(UTC):
        raise FormatError(f"{path}: signed_at {claimed:%Y-%m-%dT%H:%M:%SZ} is in the future")
    when = claimed if claimed is not None else leaf.not_valid_before_utc
    subject = subject_of(leaf)
    if when < leaf.not_valid_before_utc:
        raise FormatError(
            f"leaf certificate {subject} was not yet valid at signing time "
            f"{when:%Y-%m-%dT%H:%M:%SZ} (valid from {leaf.not_valid_before_utc:%Y-%m-%d})"
        )
    if when > leaf.not_valid_after_utc:
        raise FormatError(
            f"leaf certificate {subject} had expired at signing time "
            f"{when:%Y-%m-%dT%H:%M:%SZ} (valid until {leaf.not_valid_after_utc:%Y-%m-%d})"
        )
    if not may_sign_code(leaf):
        raise FormatError(
            f"leaf certificate {subject} allows neither digitalSignature nor codeSigning"
        )
    try:
        chain = verify_path(
            leaf, pool, roots, when, allow_intermediate_anchor=allow_intermediate_anchor
        )
    except PathError as exc:
        raise FormatError(
            f"{description}: no path from {subject} to a trusted root "
            f"({', '.join(subject_of(r) for r in roots)}): {exc}"
        ) from None
    _only_path_certificates(bundle, chain, path=path)
    issuer = subject_of(chain[1]) if len(chain) > 1 else subject_of(chain[0])
    return ChainProof(tuple(chain), f"certificate {subject} (issued by {issuer})", claimed)


def _only_path_certificates(bundle: Bundle, chain: Sequence[Any], *, path: str) -> None:
    """Every certificate the bundle carries is on the validated path, once.

    A certificate the path does not use (the leaf again, an intermediate twice, an
    unrelated one) changes nothing the proof rests on, so the bundle would verify under
    a new bundle digest (the name the audit log records).  model_signing writes the
    leaf and the chain it was given (its released bundles: leaf and intermediate),
    all on the path; the root may be carried too.
    """
    from cryptography.hazmat.primitives import serialization

    on_path = {c.public_bytes(serialization.Encoding.DER) for c in chain}
    seen: set[bytes] = set()
    for i, der in enumerate(bundle.certificates):
        if der in seen:
            raise FormatError(
                f"{path}: x509CertificateChain.certificates[{i}] is a duplicate certificate"
            )
        seen.add(der)
        if der not in on_path:
            raise FormatError(
                f"{path}: x509CertificateChain.certificates[{i}] is not a certificate of "
                "the validated path (leaf, intermediates, root): a bundle carries only "
                "those"
            )
