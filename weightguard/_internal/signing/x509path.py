"""X.509 path validation for certificate-signed bundles, by cryptography's verifier.

Path building, signatures, validity at the signing time, basicConstraints (CA flag and
pathLenConstraint), name constraints, keyCertSign on issuers and unknown critical
extensions are RFC 5280 / CA-B Forum rules implemented by
``cryptography.x509.verification``; weightguard adds only what code signing needs of
the leaf (model-signing's rule: KeyUsage digitalSignature, or EKU codeSigning).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature

MAX_CHAIN_DEPTH = 8


def subject_of(cert: Any) -> str:
    return str(cert.subject.rfc4514_string()) or "<empty subject>"


def may_sign_code(cert: Any) -> bool:
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


class PathError(Exception):
    """No valid path; the message says why (cryptography's reason included)."""


def _leaf_policy() -> Any:
    from cryptography import x509
    from cryptography.x509.verification import Criticality, ExtensionPolicy

    def code_signing(_policy: Any, cert: Any, _value: Any) -> None:
        if not may_sign_code(cert):
            raise ValueError("leaf allows neither digitalSignature nor codeSigning")

    # permit_all, not webpki_defaults_ee: code-signing leaves need no SAN or serverAuth /
    # clientAuth EKU, and model-signing's own test leaf is marked CA; everything about
    # the issuers stays webpki strict.
    return ExtensionPolicy.permit_all().may_be_present(
        x509.KeyUsage, Criticality.AGNOSTIC, code_signing
    )


def is_self_signed(cert: Any) -> bool:
    """A root: issued by itself and its signature verifies with its own key."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def split_anchors(
    roots: Sequence[Any], *, allow_intermediate_anchor: bool
) -> tuple[list[Any], list[Any]]:
    """(trust anchors, untrusted helpers) from the certificates a caller trusts.

    As OpenSSL (and so model_signing) does by default, only a self-signed root is a
    trust anchor: a CA certificate issued by another one may help build the path but
    cannot end it.  ``allow_intermediate_anchor`` makes every given certificate an
    anchor (OpenSSL's ``X509_V_FLAG_PARTIAL_CHAIN``).
    """
    if allow_intermediate_anchor:
        return list(roots), []
    anchors = [r for r in roots if is_self_signed(r)]
    return anchors, [r for r in roots if not is_self_signed(r)]


def verify_path(
    leaf: Any,
    untrusted: Sequence[Any],
    roots: Sequence[Any],
    when: datetime,
    *,
    allow_intermediate_anchor: bool = False,
) -> list[Any]:
    """The validated chain ``[leaf, ..., root]`` at ``when``; raises :class:`PathError`.

    Only self-signed ``roots`` are anchors unless ``allow_intermediate_anchor``
    (:func:`split_anchors`)."""
    from cryptography.x509.verification import (
        ExtensionPolicy,
        PolicyBuilder,
        Store,
        VerificationError,
    )

    if not roots:
        raise PathError("no trusted root configured")
    anchors, helpers = split_anchors(roots, allow_intermediate_anchor=allow_intermediate_anchor)
    if not anchors:
        raise PathError(
            "the trusted chain holds no self-signed root, only intermediate CA "
            + ", ".join(subject_of(r) for r in roots)
            + "; an intermediate is a trust anchor only when allowed explicitly "
            "(allow_intermediate_anchor=True, CLI --trust-intermediate), as "
            "model_signing (OpenSSL) refuses it"
        )
    roots = anchors
    untrusted = [*untrusted, *helpers]
    builder = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(when)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_leaf_policy()
        )
    )
    try:
        verified = builder.build_client_verifier().verify(leaf, list(untrusted))
    except VerificationError as exc:
        raise PathError(str(exc)) from None
    return list(verified.chain)
