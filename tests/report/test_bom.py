"""`weightguard bom`: a CycloneDX 1.6 ML-BOM, validated with cyclonedx-python-lib's
validator against the official 1.6 schema (never a hand-written one)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report.conftest import BASE_MODEL, Release
from tests.support.load import make_sign_keys
from weightguard.bom import build_bom, validate_bom
from weightguard.errors import FormatError, VerificationError

ROOT = Path(__file__).resolve().parents[2]


def _official(text: str) -> None:
    # imported here: the validator compiles the schema's grammar on import (~2 s), which
    # collection should not pay
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert err is None, err


def test_bom_validates_and_states_the_verified_facts(release: Release) -> None:
    text = build_bom(release.path, release.keys.policy(), version="1.0.0")
    _official(text)
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    model = bom["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["version"] == "1.0.0"
    # files and hashes: the bytes on disk
    files = {c["name"]: c for c in model["components"]}
    assert set(files) == {"README.md", "config.json", "model.safetensors"}
    for name, c in files.items():
        assert c["type"] == "file"
        assert c["hashes"] == [
            {"alg": "SHA-256",
             "content": hashlib.sha256((release.path / name).read_bytes()).hexdigest()}
        ]  # fmt: skip
    # signature and signer
    (ref,) = model["externalReferences"]
    assert ref["type"] == "digital-signature" and ref["url"] == "model.sig"
    sig_sha = hashlib.sha256((release.path / "model.sig").read_bytes()).hexdigest()
    assert ref["hashes"] == [{"alg": "SHA-256", "content": sig_sha}]
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["weightguard:signature:verdict"] == "PASS"
    assert props["weightguard:signature:bundle_sha256"] == sig_sha
    assert model["supplier"]["name"] == props["weightguard:signature:signer"]
    comps = {c["bom-ref"]: c for c in bom["components"]}
    key = next(c for c in comps.values() if c["name"].startswith("signer public key"))
    rcm = key["cryptoProperties"]["relatedCryptoMaterialProperties"]
    assert rcm["type"] == "public-key" and rcm["id"].startswith("sha256:")
    # encryption and key provider: a reference, never the key
    aead = comps["crypto:AES-256-GCM"]["cryptoProperties"]["algorithmProperties"]
    assert (aead["primitive"], aead["mode"], aead["parameterSetIdentifier"]) == ("ae", "gcm", "256")
    dk = comps["data-key:model.safetensors"]["cryptoProperties"]
    dk = dk["relatedCryptoMaterialProperties"]
    assert dk["type"] == "secret-key" and dk["id"] == f"file://{release.data_key}"
    assert "value" not in dk
    assert release.data_key.read_text().strip() not in text
    # watermark commitment (embedded with torch in the fixture)
    commit = release.path.parent / "release.wmcommit.json"
    if commit.exists():
        doc = json.loads(commit.read_text())
        assert props["weightguard:watermark:commitment"] == doc["commitment"]
    # dependencies: the base model the release declares in signed files
    base = comps[f"model:{BASE_MODEL}"]
    assert base["purl"] == "pkg:huggingface/meta-llama/Llama-3.2-1B"
    deps = {d["ref"]: d.get("dependsOn", []) for d in bom["dependencies"]}
    assert f"model:{BASE_MODEL}" in deps[model["bom-ref"]]
    assert "crypto:AES-256-GCM" in deps[model["bom-ref"]]


def test_no_bom_for_a_release_that_does_not_verify(release: Release, tmp_path: Path) -> None:
    other = make_sign_keys(tmp_path, "other")
    with pytest.raises(VerificationError, match=r"no BOM for a release that does not verify"):
        build_bom(release.path, other.policy())


def test_validate_bom_refuses_an_invalid_document(release: Release) -> None:
    bom = json.loads(build_bom(release.path, release.keys.policy()))
    bom["metadata"]["component"]["type"] = "weights"
    with pytest.raises(FormatError, match=r"does not validate against CycloneDX 1\.6"):
        validate_bom(json.dumps(bom))


def test_cli_bom_to_a_file(release: Release, tmp_path: Path) -> None:
    out = tmp_path / "bom.json"
    p = subprocess.run(
        [sys.executable, "-m", "weightguard_cli", "bom", str(release.path),
         "--trust-key", str(release.keys.public), "-o", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "own.jsonl")},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == f"wrote {out} (CycloneDX 1.6, validated)"
    _official(out.read_text())


def test_certificate_chain_in_report_and_bom(release: Release, tmp_path: Path) -> None:
    import shutil

    from cryptography import x509

    from tests.support.signing import write_chain
    from weightguard.policy import ChainRoot
    from weightguard.report import build_report
    from weightguard.signing import CertificateSigner, sign_model

    ch = write_chain(tmp_path, "acme-")
    model = tmp_path / "model"
    shutil.copytree(release.path, model)
    (model / "model.sig").unlink()
    signer = CertificateSigner.from_files(
        ch["leaf_key"], ch["leaf_cert"], [ch["intermediate"]], None
    )
    sign_model(model, model / "model.sig", signer)
    policy = ChainRoot(str(ch["root"]))
    ev = build_report(model, policy)
    (proof,) = ev.provenance.proofs
    assert [(c.subject, c.issuer) for c in proof.chain] == [
        ("CN=acme-signer", "CN=acme-intermediate"),
        ("CN=acme-intermediate", "CN=acme-root"),
        ("CN=acme-root", "CN=acme-root"),
    ]
    leaf = x509.load_pem_x509_certificate(ch["leaf_cert"].read_bytes())
    assert proof.chain[0].not_after == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = build_bom(model, policy)
    _official(text)
    certs = {
        c["name"]: c["cryptoProperties"]["certificateProperties"]
        for c in json.loads(text)["components"]
        if c.get("cryptoProperties", {}).get("assetType") == "certificate"
    }
    assert certs["CN=acme-signer"]["issuerName"] == "CN=acme-intermediate"
    assert certs["CN=acme-signer"]["notValidAfter"] == leaf.not_valid_after_utc.isoformat()
