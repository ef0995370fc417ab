"""A CycloneDX 1.6 ML-BOM of a verified release, built and validated with
cyclonedx-python-lib (the official 1.6 JSON schema ships with it).

Layout (every bom-ref stable, derived from names):

* ``metadata.component``: the model (``machine-learning-model``), its files as
  ``file`` sub-components with the verified digests, and properties in the
  ``weightguard:`` namespace (signature verdict, signer, signing time, key provider,
  watermark commitment);
* ``externalReferences`` of the model: the signature bundle (``digital-signature``,
  with its SHA-256);
* cryptographic assets (CycloneDX 1.6 CBOM): the signature algorithm, the signer's
  certificates or public key, the content encryption algorithm (AES-256-GCM) and each
  data key as ``related-crypto-material`` secured by its key provider (a reference,
  never key material);
* ``dependencies``: the model depends on its base model (when the release declares
  one in signed files) and on the cryptographic assets that protect it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from weightguard._internal.foundation.extras import require
from weightguard._internal.report.evidence import Protection, Provenance
from weightguard.errors import FormatError

SPEC = "1.6"
NS = "weightguard"


def _hash(alg: str, hexdigest: str) -> Any:
    from cyclonedx.model import HashAlgorithm, HashType

    algo = {"sha256": HashAlgorithm.SHA_256, "blake3": HashAlgorithm.BLAKE3}.get(alg)
    if algo is None:
        raise FormatError(f"no CycloneDX hash algorithm for {alg!r}")
    return HashType(alg=algo, content=hexdigest)


def _props(pairs: Sequence[tuple[str, Any]]) -> list[Any]:
    from cyclonedx.model import Property

    return [Property(name=f"{NS}:{k}", value=str(v)) for k, v in pairs if v not in (None, "")]


def _ref(kind: str, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-._:/@" else "-" for c in name)
    return f"{kind}:{safe}"


def build(
    prov: Provenance,
    prot: Protection,
    *,
    release: str,
    version: str,
    tool_version: str,
    signature_url: str,
    serial: str | None = None,
    timestamp: _dt.datetime | None = None,
) -> str:
    """The BOM as CycloneDX 1.6 JSON (validated before it is returned)."""
    require("the CycloneDX BOM", "cyclonedx")
    from cyclonedx.model import ExternalReference, ExternalReferenceType, XsUri
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.crypto import (
        AlgorithmProperties,
        CertificateProperties,
        CryptoAssetType,
        CryptoFunction,
        CryptoMode,
        CryptoPrimitive,
        CryptoProperties,
        RelatedCryptoMaterialProperties,
        RelatedCryptoMaterialSecuredBy,
        RelatedCryptoMaterialType,
    )
    from cyclonedx.model.dependency import Dependency
    from cyclonedx.output.json import JsonV1Dot6

    name = prov.model_name or release.rstrip("/").rsplit("/", 1)[-1]
    encrypted = {a.name: a for a in prot.encrypted}
    files = [
        Component(
            type=ComponentType.FILE,
            name=f.name,
            bom_ref=_ref("file", f.name),
            hashes=[_hash(f.digest_algorithm, f.digest)],
            properties=_props(
                [
                    ("size", f.size),
                    ("chunk_digest", f"{f.chunks} x {f.chunk_algorithm}"),
                    ("encrypted", "true" if f.name in encrypted else "false"),
                ]
            ),
        )
        for f in prov.files
    ]
    crypto: list[Any] = []
    depends: list[str] = []

    # -- signature: the algorithm, and who holds the key
    alg_refs: dict[str, Any] = {}
    for i, p in enumerate(prov.proofs):
        alg = p.key_algorithm or "ECDSA"
        if alg not in alg_refs:
            ref = _ref("crypto", f"signature-{alg}")
            curve = alg.split(" ", 1)[1] if " " in alg else None
            comp = Component(
                type=ComponentType.CRYPTOGRAPHIC_ASSET,
                name=alg,
                bom_ref=ref,
                crypto_properties=CryptoProperties(
                    asset_type=CryptoAssetType.ALGORITHM,
                    algorithm_properties=AlgorithmProperties(
                        primitive=CryptoPrimitive.SIGNATURE,
                        curve=curve,
                        crypto_functions=[CryptoFunction.SIGN, CryptoFunction.VERIFY],
                    ),
                ),
            )
            crypto.append(comp)
            depends.append(ref)
            alg_refs[alg] = comp.bom_ref
        sig_alg_ref = alg_refs[alg]
        if p.chain:
            for j, c in enumerate(p.chain):
                cref = _ref("cert", c.sha256[:32])
                crypto.append(
                    Component(
                        type=ComponentType.CRYPTOGRAPHIC_ASSET,
                        name=c.subject,
                        bom_ref=cref,
                        description="signer certificate" if j == 0 else "issuer certificate",
                        crypto_properties=CryptoProperties(
                            asset_type=CryptoAssetType.CERTIFICATE,
                            certificate_properties=CertificateProperties(
                                subject_name=c.subject,
                                issuer_name=c.issuer,
                                not_valid_before=_dt.datetime.fromisoformat(c.not_before),
                                not_valid_after=_dt.datetime.fromisoformat(c.not_after),
                                certificate_format="X.509",
                            ),
                        ),
                        hashes=[_hash("sha256", c.sha256)],
                    )
                )
                depends.append(cref)
        elif p.key_fingerprint:
            kref = _ref("key", f"signer-{i}")
            crypto.append(
                Component(
                    type=ComponentType.CRYPTOGRAPHIC_ASSET,
                    name=f"signer public key {p.key_fingerprint}",
                    bom_ref=kref,
                    crypto_properties=CryptoProperties(
                        asset_type=CryptoAssetType.RELATED_CRYPTO_MATERIAL,
                        related_crypto_material_properties=RelatedCryptoMaterialProperties(
                            type=RelatedCryptoMaterialType.PUBLIC_KEY,
                            id=p.key_fingerprint,
                            algorithm_ref=sig_alg_ref,
                        ),
                    ),
                )
            )
            depends.append(kref)

    # -- encryption at rest: the AEAD, and each data key as a provider reference
    if prot.encrypted:
        aead_ref = _ref("crypto", "AES-256-GCM")
        aead = Component(
            type=ComponentType.CRYPTOGRAPHIC_ASSET,
            name="AES-256-GCM",
            bom_ref=aead_ref,
            description="chunked AEAD of the weights (docs/FORMAT.md)",
            crypto_properties=CryptoProperties(
                asset_type=CryptoAssetType.ALGORITHM,
                algorithm_properties=AlgorithmProperties(
                    primitive=CryptoPrimitive.AE,
                    parameter_set_identifier="256",
                    mode=CryptoMode.GCM,
                    crypto_functions=[
                        CryptoFunction.ENCRYPT,
                        CryptoFunction.DECRYPT,
                        CryptoFunction.TAG,
                    ],
                    classical_security_level=256,
                ),
                oid="2.16.840.1.101.3.4.1.46",
            ),
        )
        crypto.append(aead)
        depends.append(aead_ref)
        for a in prot.encrypted:
            dref = _ref("data-key", a.name)
            ver = f" v{a.key_version}" if a.key_version is not None else ""
            crypto.append(
                Component(
                    type=ComponentType.CRYPTOGRAPHIC_ASSET,
                    name=f"data key of {a.name}",
                    bom_ref=dref,
                    description=f"wrapped by {a.provider} {a.key_uri}{ver}; never in the BOM",
                    crypto_properties=CryptoProperties(
                        asset_type=CryptoAssetType.RELATED_CRYPTO_MATERIAL,
                        related_crypto_material_properties=RelatedCryptoMaterialProperties(
                            type=RelatedCryptoMaterialType.SECRET_KEY,
                            id=f"{a.key_uri}{ver}",
                            size=256,
                            algorithm_ref=aead.bom_ref,
                            secured_by=RelatedCryptoMaterialSecuredBy(
                                mechanism=f"{a.provider} key wrapping ({a.key_uri})"
                            ),
                        ),
                    ),
                    properties=_props(
                        [
                            ("key_provider", a.provider),
                            ("key_uri", a.key_uri),
                            ("key_version", a.key_version),
                            ("key_context", a.context),
                            ("header_encrypted", str(a.header_encrypted).lower()),
                        ]
                    ),
                )
            )
            depends.append(dref)

    # -- base model
    base = None
    if prov.base_model is not None:
        bname, where = prov.base_model
        purl = None
        if bname.count("/") == 1:  # a Hugging Face Hub repository id
            from packageurl import PackageURL

            org, repo = bname.split("/")
            purl = PackageURL(type="huggingface", namespace=org, name=repo)
        base = Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            name=bname,
            purl=purl,
            bom_ref=_ref("model", bname),
            description=f"base model declared in {where}",
        )
        depends.insert(0, _ref("model", bname))

    wm = prot.watermark
    model_props: list[tuple[str, Any]] = [
        ("signature:verdict", prov.verdict),
        ("signature:policy", prov.policy),
        ("signature:signer", prov.signer),
        ("signature:signed_at", prov.signed_at),
        ("signature:time_source", prov.time_source),
        ("signature:bundle_sha256", prov.bundle_sha256),
        ("signature:kind", prov.kind),
        ("uncovered", ", ".join(n for n, _ in prov.uncovered)),
        ("encryption", "AES-256-GCM" if prot.encrypted else "none"),
        ("key_providers", ", ".join(sorted({a.provider for a in prot.encrypted}))),
    ]
    for p in prov.proofs:
        for t in p.tlog:
            model_props.append(("signature:tlog_log_index", t.get("log_index")))
    if wm is not None:
        model_props += [
            ("watermark:scheme", wm.scheme),
            ("watermark:commitment", wm.commitment),
            ("watermark:time", wm.time),
            ("watermark:key_ref", wm.key_ref),
            ("watermark:outputs", wm.outputs_match),
            # the commitment file is not signed: tied only if its outputs are the
            # verified files
            ("watermark:tied_to_verified_files", "true" if wm.tied else "false"),
        ]
    refs = [
        ExternalReference(
            type=ExternalReferenceType.DIGITAL_SIGNATURE,
            url=XsUri(signature_url),
            comment=f"OpenSSF model-signing bundle; signer: {prov.signer}",
            hashes=[_hash("sha256", prov.bundle_sha256)] if prov.bundle_sha256 else None,
        )
    ]
    from cyclonedx.model.contact import OrganizationalEntity

    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=name,
        # who supplied it: the signer, as verification proved it
        supplier=OrganizationalEntity(name=prov.signer) if prov.signer else None,
        version=version or None,
        bom_ref=_ref("model", name),
        components=files,
        properties=_props(model_props),
        external_references=refs,
    )
    bom = Bom(
        metadata=BomMetaData(component=model, timestamp=timestamp or _dt.datetime.now(_dt.UTC)),
        components=[*crypto, *([base] if base else [])],
    )
    if serial is not None:
        import uuid

        bom.serial_number = uuid.UUID(serial)
    tool = Component(type=ComponentType.APPLICATION, name="weightguard", version=tool_version)
    bom.metadata.tools.components.add(tool)
    by_ref = {c.bom_ref.value: c.bom_ref for c in [*crypto, *([base] if base else [])]}
    bom.dependencies.add(
        Dependency(ref=model.bom_ref, dependencies=[Dependency(ref=by_ref[r]) for r in depends])
    )
    for c in [*crypto, *([base] if base else []), *files]:
        bom.dependencies.add(Dependency(ref=c.bom_ref))
    text: str = JsonV1Dot6(bom).output_as_string(indent=2)
    validate(text)
    return text


def validate(text: str) -> None:
    """Raise FormatError unless ``text`` validates against the official CycloneDX 1.6
    JSON schema (cyclonedx-python-lib's strict validator)."""
    require("validating a CycloneDX BOM", "cyclonedx")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if err is not None:
        raise FormatError(f"the BOM does not validate against CycloneDX {SPEC}: {err}")
