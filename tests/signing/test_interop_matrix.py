"""Interop matrix: weightguard's verdict equals model_signing's on every vector.

Vectors (tests/vectors/oms/README.md): signatures made by model_signing 0.3.1, 1.0.1
and 1.1.1 (key, certificate; files, shards; sha256, blake2, blake3; git paths, ':' in
names, ignore paths) and model-transparency's historical bundles (v0.2.0 .. v1.1.0,
key, certificate and Sigstore).  Each is judged as signed and after each tamper of
tamper.py (file added, removed, renamed, modified):

* by model_signing live (the installed 1.1.1 API, with the hashing configuration the
  signer used, Sigstore offline with the production trusted root the sigstore package
  ships), and
* for vectors of other versions, against the verdict that version gave when the vector
  was generated (expected.json, ``explicit``).

The one deliberate difference is listed in ``STRICTER`` with the reason weightguard
must give (docs/signing.md, "Stricter than model_signing").
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.vectors.oms import restore_untracked
from tests.vectors.oms.tamper import SINGLE_FILE_TAMPERS, TAMPERS
from weightguard.errors import WeightguardError
from weightguard.policy import ChainRoot, Policy, PublicKey, SigstoreIdentity
from weightguard.signing import verify_bundle

OMS = Path(__file__).resolve().parents[1] / "vectors" / "oms"
HIST = OMS / "historical"
EXPECTED: dict[str, dict[str, Any]] = json.loads((OMS / "expected.json").read_text())
SIGSTORE_ID = ("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")
SIGSTORE_STORE = "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"

# case -> the reason weightguard gives where model_signing accepts and it refuses.
STRICTER = {
    "key-ignore-weights": r"weight files|model_signing accepts such a signature",
}


@dataclass(frozen=True)
class Vector:
    id: str
    model: Path  # file or directory (never containing the signature)
    sig: Path
    kind: str  # key | cert | sigstore
    keys: Path
    method: str = "files"
    hash: str = "sha256"
    shard_size: int = 0
    ignore_git: bool = True
    ignore: tuple[str, ...] = ()
    recorded: dict[str, str] = field(default_factory=dict)  # generating version's verdicts
    case: str = ""


def _vectors() -> list[Vector]:
    out = []
    for version, cases in sorted(EXPECTED.items()):
        for case, spec in sorted(cases.items()):
            d = OMS / f"ms-{version}" / case
            out.append(
                Vector(
                    f"ms-{version}/{case}",
                    d / "model",
                    d / "model.sig",
                    spec["kind"],
                    OMS / "keys",
                    spec["method"],
                    spec["hash"],
                    spec["shard_size"],
                    spec["ignore_git"],
                    tuple(spec["ignore_paths"]),
                    spec["verdicts"]["explicit"],
                    case,
                )
            )
    for d in sorted(HIST.glob("v*")):
        kind = {"elliptic-key": "key", "certificate": "cert"}.get(
            d.name.split("-", 1)[1], "sigstore"
        )
        single = not (d / "signme-2").exists()
        out.append(
            Vector(
                f"historical/{d.name}",
                d / "signme-1" if single else d,
                d / "model.sig",
                kind,
                HIST / "keys",
                ignore=("ignore-me",) if (d / "ignore-me").exists() else (),
            )
        )
    return out


VECTORS = _vectors()


def _copy(v: Vector, tmp: Path, tamper: str) -> tuple[Path, Path]:
    model, sig = tmp / "model", tmp / "model.sig"
    shutil.copy2(v.sig, sig)
    if v.model.is_file():
        shutil.copy2(v.model, model)
    else:
        shutil.copytree(v.model, model, ignore=shutil.ignore_patterns("model.sig"))
        restore_untracked(v.model.parent, model)
    if tamper != "original":
        TAMPERS[tamper](model)
    return model, sig


def _policy(v: Vector, *, anchor: str = "root", allow_intermediate: bool = False) -> Policy:
    if v.kind == "key":
        name = "key-pub.pem" if v.keys == OMS / "keys" else "signing-key-pub.pem"
        return PublicKey.from_file(v.keys / name)
    if v.kind == "cert":
        if v.keys == OMS / "keys":
            pem = v.keys / ("root-cert.pem" if anchor == "root" else "int-cert.pem")
        else:
            pem = v.keys / ("ca-cert.pem" if anchor == "root" else "int-ca-cert.pem")
        return ChainRoot(pem, allow_intermediate_anchor=allow_intermediate)
    return SigstoreIdentity(*SIGSTORE_ID, offline=True)


def _weightguard(v: Vector, model: Path, sig: Path, policy: Policy) -> tuple[str, str]:
    try:
        verify_bundle(model, sig, policy, allow_unsigned=v.ignore)
    except WeightguardError as exc:
        return "refuse", str(exc)
    return "accept", ""


@pytest.fixture(scope="module")
def trust_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model_signing ClientTrustConfig from the production root sigstore ships."""
    from importlib import resources

    store = resources.files("sigstore._store").joinpath(SIGSTORE_STORE)
    cfg = {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": json.loads(store.joinpath("trusted_root.json").read_text()),
        "signingConfig": json.loads(store.joinpath("signing_config.v0.2.json").read_text()),
    }
    p = tmp_path_factory.mktemp("sigstore") / "trust_config.json"
    p.write_text(json.dumps(cfg))
    return p


def _model_signing(
    v: Vector, model: Path, sig: Path, trust_config: Path, *, anchor: str = "root"
) -> tuple[str, str]:
    """model_signing 1.1.1's verdict, with the hashing configuration the signer used."""
    from model_signing import hashing, verifying

    if v.kind == "key":
        name = "key-pub.pem" if v.keys == OMS / "keys" else "signing-key-pub.pem"
        cfg = verifying.Config().use_elliptic_key_verifier(public_key=v.keys / name)
    elif v.kind == "cert":
        if v.keys == OMS / "keys":
            pem = v.keys / ("root-cert.pem" if anchor == "root" else "int-cert.pem")
        else:
            pem = v.keys / ("ca-cert.pem" if anchor == "root" else "int-ca-cert.pem")
        cfg = verifying.Config().use_certificate_verifier(certificate_chain=[pem])
    else:
        cfg = verifying.Config().use_sigstore_verifier(
            identity=SIGSTORE_ID[0], oidc_issuer=SIGSTORE_ID[1], trust_config=trust_config
        )
    h = hashing.Config()
    if v.method == "shards":
        h = h.use_shard_serialization(hashing_algorithm=v.hash, shard_size=v.shard_size)
    else:
        h = h.use_file_serialization(hashing_algorithm=v.hash)
    if model.is_dir():
        h = h.set_ignored_paths(paths=[model / p for p in v.ignore], ignore_git_paths=v.ignore_git)
    try:
        cfg.set_hashing_config(h).verify(model, sig)
    except Exception as exc:  # any refusal is a verdict
        return "refuse", str(exc)
    return "accept", ""


def _cases() -> list[Any]:
    out = []
    for v in VECTORS:
        tampers = SINGLE_FILE_TAMPERS if v.model.is_file() else tuple(TAMPERS)
        for t in ("original", *tampers):
            out.append(pytest.param(v, t, id=f"{v.id}:{t}"))
    return out


@pytest.mark.parametrize(("v", "tamper"), _cases())
def test_same_verdict_as_model_signing(
    v: Vector, tamper: str, tmp_path: Path, trust_config: Path
) -> None:
    model, sig = _copy(v, tmp_path, tamper)
    wg, why = _weightguard(v, model, sig, _policy(v))
    ms, ms_why = _model_signing(v, model, sig, trust_config)
    if v.case in STRICTER:
        # deliberately stricter: refused, with the reason, even where model_signing accepts
        assert wg == "refuse", f"{v.id} {tamper}: weightguard accepted"
        if ms == "accept":
            assert re.search(STRICTER[v.case], why), why
        return
    assert wg == ms, f"{v.id} {tamper}: weightguard {wg} ({why}), model_signing {ms} ({ms_why})"
    if v.recorded:
        recorded = "accept" if v.recorded[tamper] == "accept" else "refuse"
        assert wg == recorded, f"{v.id} {tamper}: generating version said {v.recorded[tamper]}"
    if tamper == "original":
        assert wg == "accept", f"{v.id}: {why}"


CERT_VECTORS = [pytest.param(v, id=v.id) for v in VECTORS if v.kind == "cert"]


@pytest.mark.parametrize("v", CERT_VECTORS)
def test_intermediate_is_no_trust_anchor_by_default(
    v: Vector, tmp_path: Path, trust_config: Path
) -> None:
    model, sig = _copy(v, tmp_path, "original")
    ms, ms_why = _model_signing(v, model, sig, trust_config, anchor="intermediate")
    assert ms == "refuse" and "issuer certificate" in ms_why, ms_why
    wg, why = _weightguard(v, model, sig, _policy(v, anchor="intermediate"))
    assert wg == "refuse"
    assert "no self-signed root, only intermediate CA" in why and "--trust-intermediate" in why
    # ... unless the caller says so
    wg, why = _weightguard(
        v, model, sig, _policy(v, anchor="intermediate", allow_intermediate=True)
    )
    assert wg == "accept", why


def test_matrix_covers_every_shape() -> None:
    """The vectors span what the issue lists (a vector lost would shrink the matrix)."""
    ids = {v.id for v in VECTORS}
    for version in ("0.3.1", "1.0.1", "1.1.1"):
        for case in ("key-files-sha256", "key-files-blake2", "key-shards-sha256",
                     "key-shards-blake2", "key-git-paths", "key-colon-name"):  # fmt: skip
            assert f"ms-{version}/{case}" in ids
    assert {"ms-1.0.1/cert-shards-sha256", "ms-1.1.1/cert-files-sha256"} <= ids
    assert "ms-1.1.1/key-files-blake3" in ids
    for name in ("v0.2.0-certificate", "v0.3.1-elliptic-key", "v1.0.0-sigstore"):
        assert f"historical/{name}" in ids
    assert len(_cases()) >= 200
