"""A CycloneDX 1.6 ML-BOM of a release, for machines: who supplied the model, what it
is made of, what protects it, and what it depends on.

    from weightguard.bom import build_bom
    text = build_bom("release/", PublicKey.from_file("release.pub"))   # JSON

Every fact comes from verification under the caller's ``policy`` (as in
:mod:`weightguard.report`): the files and their digests are the verified ones, the
signer the proven one.  A release that does not verify gets no BOM
(:class:`~weightguard.errors.VerificationError`).  The document is built with
cyclonedx-python-lib and validated against the official CycloneDX 1.6 JSON schema
before it is returned.  Needs the ``report`` extra; no data key, no torch.
"""

from __future__ import annotations

import os
from typing import Any

from weightguard import __version__
from weightguard._internal.bom.cyclonedx import SPEC, build, validate
from weightguard._internal.report.evidence import PASS
from weightguard.errors import VerificationError
from weightguard.manifest import S3Options
from weightguard.report import default_signature, release_evidence

__all__ = ["SPEC", "build_bom", "validate_bom", "write_bom"]


def build_bom(
    release: str | os.PathLike[str],
    policy: Any,
    *,
    signature: str | os.PathLike[str] | None = None,
    allow_unsigned: Any = (),
    watermark_commitment: str | os.PathLike[str] | None = None,
    version: str | None = None,
    s3: S3Options | None = None,
    audit: Any = None,
) -> str:
    """The release's ML-BOM as CycloneDX 1.6 JSON text (validated)."""
    rel = os.fspath(release)
    prov, prot = release_evidence(
        rel,
        policy,
        signature=signature,
        allow_unsigned=allow_unsigned,
        watermark_commitment=watermark_commitment,
        s3=s3,
        audit=audit,
    )
    if prov.verdict != PASS:
        raise VerificationError(
            f"{rel}: no BOM for a release that does not verify: {prov.summary}",
            hint="a BOM states verified facts only; fix the release or the trust options",
        )
    sig = os.fspath(signature) if signature is not None else default_signature(rel)
    sig_url = sig
    if not rel.startswith("s3://"):
        base = rel if os.path.isdir(rel) else os.path.dirname(rel)
        rel_sig = os.path.relpath(sig, base or ".")
        sig_url = rel_sig if not rel_sig.startswith("..") else os.path.abspath(sig)
    return build(
        prov,
        prot,
        release=rel,
        version=version or "",
        tool_version=__version__,
        signature_url=sig_url,
    )


def validate_bom(text: str) -> None:
    """Raise :class:`~weightguard.errors.FormatError` unless ``text`` validates against
    the official CycloneDX 1.6 JSON schema."""
    validate(text)


def write_bom(path: str | os.PathLike[str], text: str) -> None:
    """Write a BOM atomically (it appears whole or not at all)."""
    from weightguard._internal.foundation.atomic import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))
