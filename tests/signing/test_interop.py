"""Interop with the reference tool (model-signing 1.1.1) and its published vectors."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.support.signing import (
    INTEROP,
    make_model,
    model_signing,
    payload_of,
    write_chain,
    write_key,
)
from weightguard.errors import FormatError, IntegrityError, PolicyError, VerificationError
from weightguard.policy import (
    AllOf,
    AnyOf,
    ChainRoot,
    KeyFingerprint,
    Policy,
    PublicKey,
    SigstoreIdentity,
)
from weightguard.signing import (
    CertificateSigner,
    KeySigner,
    VaultTransitSigner,
    sign_model,
    vault_key_policy,
    vault_public_keys,
    verify_bundle,
)

V = INTEROP / "model-signing-v1.1.0"
KEYS = V / "keys"
SIGSTORE_ID = ("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")

pytestmark = pytest.mark.skipif(not INTEROP.is_dir(), reason="../shared/interop not present")


def _vectors() -> list[tuple[str, Path, Path, Callable[[], Policy]]]:
    st = INTEROP / "model-signing-1.1.1-safetensors"
    return [
        (
            "ec-key",
            V / "v1.1.0-elliptic-key",
            V / "v1.1.0-elliptic-key/model.sig",
            lambda: PublicKey.from_file(KEYS / "signing-key-pub.pem"),
        ),
        (
            "certificate",
            V / "v1.1.0-certificate",
            V / "v1.1.0-certificate/model.sig",
            lambda: ChainRoot(KEYS / "ca-cert.pem"),
        ),
        (
            "sigstore",
            V / "v1.1.0-sigstore",
            V / "v1.1.0-sigstore/model.sig",
            lambda: SigstoreIdentity(*SIGSTORE_ID),
        ),
        (
            "safetensors-p384",
            st / "tiny-llm",
            st / "tiny-llm.sig",
            lambda: PublicKey.from_file(st / "p384.pub"),
        ),
    ]


VECTORS = _vectors()
IDS = [v[0] for v in VECTORS]


@pytest.mark.parametrize(("name", "model", "sig", "policy"), VECTORS, ids=IDS)
def test_vector_verifies(name: str, model: Path, sig: Path, policy: Callable[[], Policy]) -> None:
    m = verify_bundle(model, sig, policy())
    assert m.hashed and not m.unsafe
    if name == "safetensors-p384":
        assert sorted(m.files) == ["config.json", "model.safetensors"]
        assert m.uncovered == ()
    else:
        assert sorted(m.files) == ["signme-1", "signme-2"]
        assert m.uncovered == ("ignore-me",)  # in the signature's ignore_paths
    if name == "sigstore":
        assert m.signer.startswith("stefanb@us.ibm.com")
        assert m.time_source == "transparency-log"
        assert m.signed_at is not None and m.signed_at.year == 2025
    if name == "certificate":
        assert "CN=intermediate-ca" in m.signer


def _copy(model: Path, sig: Path, tmp: Path) -> tuple[Path, Path]:
    dst = tmp / model.name
    shutil.copytree(model, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    new_sig = dst / "model.sig" if sig.parent == model else tmp / sig.name
    if not new_sig.exists():
        shutil.copy(sig, new_sig)
    new_sig.chmod(0o644)
    return dst, new_sig


@pytest.mark.parametrize(("name", "model", "sig", "policy"), VECTORS, ids=IDS)
def test_vector_rejected_after_file_byte_change(
    tmp_path: Path, name: str, model: Path, sig: Path, policy: Callable[[], Policy]
) -> None:
    dst, new_sig = _copy(model, sig, tmp_path)
    verify_bundle(dst, new_sig, policy())  # the copy verifies
    target = dst / ("model.safetensors" if name == "safetensors-p384" else "signme-1")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=target.name):
        verify_bundle(dst, new_sig, policy())


def _mutate_payload(sig: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(sig.read_text())
    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    fn(payload)
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    sig.write_text(json.dumps(doc))


@pytest.mark.parametrize(("name", "model", "sig", "policy"), VECTORS, ids=IDS)
def test_vector_rejected_after_signed_byte_change(
    tmp_path: Path, name: str, model: Path, sig: Path, policy: Callable[[], Policy]
) -> None:
    dst, new_sig = _copy(model, sig, tmp_path)

    def drop_ignore(p: dict[str, Any]) -> None:
        p["predicate"]["serialization"]["ignore_paths"] = []

    _mutate_payload(new_sig, drop_ignore)
    with pytest.raises(PolicyError, match="does not satisfy"):
        verify_bundle(dst, new_sig, policy())
    # a flipped bit in the signature itself
    dst2, sig2 = _copy(model, sig, tmp_path / "b")
    doc = json.loads(sig2.read_text())
    raw = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-3] ^= 0x40
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig2.write_text(json.dumps(doc))
    with pytest.raises(PolicyError):
        verify_bundle(dst2, sig2, policy())


def test_vectors_rejected_with_wrong_key_identity_or_root(tmp_path: Path) -> None:
    write_key(tmp_path, "other", "p384")
    with pytest.raises(PolicyError, match="signed with another key"):
        verify_bundle(
            V / "v1.1.0-elliptic-key",
            V / "v1.1.0-elliptic-key/model.sig",
            PublicKey.from_file(tmp_path / "other.pub"),
        )
    chain = write_chain(tmp_path)
    with pytest.raises(PolicyError, match="no path from"):
        verify_bundle(
            V / "v1.1.0-certificate", V / "v1.1.0-certificate/model.sig", ChainRoot(chain["root"])
        )
    with pytest.raises(PolicyError, match="Sigstore verification failed"):
        verify_bundle(
            V / "v1.1.0-sigstore",
            V / "v1.1.0-sigstore/model.sig",
            SigstoreIdentity("mallory@example.com", SIGSTORE_ID[1]),
        )
    with pytest.raises(PolicyError, match="Sigstore verification failed"):
        verify_bundle(
            V / "v1.1.0-sigstore",
            V / "v1.1.0-sigstore/model.sig",
            SigstoreIdentity(SIGSTORE_ID[0], "https://accounts.google.com"),
        )
    # the wrong kind of trust anchor names the mismatch
    with pytest.raises(PolicyError, match="not a Sigstore keyless"):
        verify_bundle(
            V / "v1.1.0-elliptic-key",
            V / "v1.1.0-elliptic-key/model.sig",
            SigstoreIdentity(*SIGSTORE_ID),
        )


def test_policy_composition_on_vectors() -> None:
    key = PublicKey.from_file(KEYS / "signing-key-pub.pem")
    ident = SigstoreIdentity(*SIGSTORE_ID)
    any_of = AnyOf(key, ident)
    m1 = verify_bundle(V / "v1.1.0-elliptic-key", V / "v1.1.0-elliptic-key/model.sig", any_of)
    m2 = verify_bundle(V / "v1.1.0-sigstore", V / "v1.1.0-sigstore/model.sig", key | ident)
    assert "P-384" in m1.signer and m2.signer.startswith("stefanb")
    with pytest.raises(PolicyError, match="not a Sigstore keyless"):
        verify_bundle(
            V / "v1.1.0-elliptic-key", V / "v1.1.0-elliptic-key/model.sig", AllOf(key, ident)
        )
    # certificate bundle: root AND leaf-key fingerprint
    from cryptography import x509

    from weightguard._internal.signing.signers.base import key_fingerprint

    leaf = x509.load_pem_x509_certificate((KEYS / "signing-key-cert.pem").read_bytes())
    fp = key_fingerprint(leaf.public_key())
    m3 = verify_bundle(
        V / "v1.1.0-certificate",
        V / "v1.1.0-certificate/model.sig",
        ChainRoot(KEYS / "ca-cert.pem") & KeyFingerprint(fp),
    )
    assert "CN=intermediate-ca" in m3.signer
    with pytest.raises(PolicyError, match="signing key is"):
        verify_bundle(
            V / "v1.1.0-certificate",
            V / "v1.1.0-certificate/model.sig",
            ChainRoot(KEYS / "ca-cert.pem") & KeyFingerprint("sha256:" + "0" * 64),
        )


# --------------------------------------------------- weightguard -> model_signing


def _encrypted_model(tmp: Path) -> Path:
    crypt = pytest.importorskip("weightguard.crypt")
    keys = pytest.importorskip("weightguard._internal.keys.providers")
    plain = make_model(tmp / "plain")
    enc = tmp / "enc"
    enc.mkdir()
    kf = keys.create_key_file(tmp / "kek.key")
    crypt.encrypt_file(
        plain / "model.safetensors", enc / "model.safetensors", f"file://{kf}", chunk_size=16384
    )
    shutil.copy(plain / "config.json", enc / "config.json")
    return enc


_API_VERIFY = """
import sys
import model_signing
model, sig, kind, material = sys.argv[1:5]
cfg = model_signing.verifying.Config()
if kind == "key":
    cfg = cfg.use_elliptic_key_verifier(public_key=material)
else:
    cfg = cfg.use_certificate_verifier(certificate_chain=[material])
try:
    cfg.verify(model, sig)  # no hashing config: taken from the bundle's hash_type
except Exception as exc:
    print(f"Verification failed with error: {exc}")
    sys.exit(1)
print("Verification succeeded")
"""


def _reference_verify(
    hash_type: str,
    model: Path,
    sig: Path,
    *,
    key: Path | None = None,
    chain_root: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """model_signing 1.1.1 verifying ``sig``: its CLI for sha256 bundles; for blake3
    bundles its API (``verifying.Config().verify``), which takes the hashing settings
    from the bundle -- the 1.1.1 CLI always re-hashes with SHA-256 (see
    test_model_signing_cli_rejects_blake3_bundles)."""
    if hash_type == "sha256":
        if key is not None:
            return model_signing(
                "verify", "key", str(model), "--signature", str(sig), "--public_key", str(key)
            )
        assert chain_root is not None
        return model_signing(
            "verify",
            "certificate",
            str(model),
            "--signature",
            str(sig),
            "--certificate_chain",
            str(chain_root),
        )
    kind, material = ("key", key) if key is not None else ("certificate", chain_root)
    return subprocess.run(
        [sys.executable, "-c", _API_VERIFY, str(model), str(sig), kind, str(material)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_model_signing_cli_rejects_blake3_bundles(tmp_path: Path) -> None:
    """Why ``sign_model``'s default hash_type is sha256: the model_signing 1.1.1 CLI's
    ``verify key`` sets its own hashing config (SHA-256), so it cannot verify a
    ``hash_type: blake3`` bundle, although its API can (see _reference_verify)."""
    import importlib.metadata

    if importlib.metadata.version("model-signing") != "1.1.1":
        pytest.skip("pinned to model_signing 1.1.1's CLI behaviour")
    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k", "p256")
    sign_model(
        model, model / "model.sig", KeySigner.from_file(tmp_path / "k.pem"), hash_type="blake3"
    )
    r = model_signing(
        "verify",
        "key",
        str(model),
        "--signature",
        str(model / "model.sig"),
        "--public_key",
        str(tmp_path / "k.pub"),
    )
    assert r.returncode != 0
    assert "Hash mismatch" in r.stdout + r.stderr and "blake3" in r.stdout + r.stderr
    assert (
        _reference_verify("blake3", model, model / "model.sig", key=tmp_path / "k.pub").returncode
        == 0
    )


def test_weightguard_verifies_model_signing_blake3_bundle(tmp_path: Path) -> None:
    """A bundle the reference API signs with hashing_algorithm="blake3" (no chunk
    records) verifies, and a changed byte is caught by the whole-file BLAKE3."""
    import model_signing as ms

    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k", "p256")
    sig = tmp_path / "ms.sig"
    ms.signing.Config().use_elliptic_key_signer(private_key=tmp_path / "k.pem").set_hashing_config(
        ms.hashing.Config().use_file_serialization(hashing_algorithm="blake3")
    ).sign(model, sig)
    assert payload_of(sig)["predicate"]["serialization"]["hash_type"] == "blake3"
    m = verify_bundle(model, sig, PublicKey.from_file(tmp_path / "k.pub"))
    f = m.files["model.safetensors"]
    data = (model / "model.safetensors").read_bytes()
    assert not f.chunked and f.algorithm == "blake3-chunked-v1"
    assert f.resource_algorithm == "blake3" and f.resource_digest == blake3.blake3(data).digest()
    assert f.digests == (f.resource_digest,)
    target = model / "model.safetensors"
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="signed BLAKE3 digest"):
        verify_bundle(model, sig, PublicKey.from_file(tmp_path / "k.pub"))


@pytest.mark.parametrize("hash_type", ["blake3", "sha256"])
@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_model_signing_accepts_weightguard_key_and_cert_bundles(
    tmp_path: Path, kind: str, hash_type: str
) -> None:
    model = make_model(tmp_path / "m") if kind == "plain" else _encrypted_model(tmp_path)
    write_key(tmp_path, "k", "p384")
    sign_model(
        model, model / "model.sig", KeySigner.from_file(tmp_path / "k.pem"), hash_type=hash_type
    )
    stmt = json.loads(
        base64.b64decode(json.loads((model / "model.sig").read_bytes())["dsseEnvelope"]["payload"])
    )
    assert stmt["predicate"]["serialization"]["hash_type"] == hash_type
    assert {r["algorithm"] for r in stmt["predicate"]["resources"]} == {hash_type}
    r = _reference_verify(hash_type, model, model / "model.sig", key=tmp_path / "k.pub")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Verification succeeded" in r.stdout + r.stderr
    m = verify_bundle(model, model / "model.sig", PublicKey.from_file(tmp_path / "k.pub"))
    f = m.files["model.safetensors"]
    want = (hashlib.sha256 if hash_type == "sha256" else blake3.blake3)(
        (model / "model.safetensors").read_bytes()
    ).digest()
    assert f.resource_algorithm == hash_type and f.resource_digest == want
    if kind == "encrypted":
        from weightguard._internal.format.layout import TAG_SIZE, read_header

        with open(model / "model.safetensors", "rb") as fh:
            hdr = read_header(fh, path="x")
        assert (f.head, f.stride) == (hdr.data_offset, hdr.chunk_size + TAG_SIZE)
        assert len(f.digests) == 1 + hdr.num_chunks

    chain = write_chain(tmp_path)
    signer = CertificateSigner.from_files(
        chain["leaf_key"], chain["leaf_cert"], [chain["intermediate"]]
    )
    sign_model(model, tmp_path / "c.sig", signer, hash_type=hash_type)
    r = _reference_verify(hash_type, model, tmp_path / "c.sig", chain_root=chain["root"])
    assert r.returncode == 0, r.stdout + r.stderr
    m = verify_bundle(model, tmp_path / "c.sig", ChainRoot(chain["root"]))
    assert "CN=signer" in m.signer and m.time_source == "signer-claim"
    # and the reference tool rejects a tampered model too (sanity of the test itself)
    target = model / "config.json"
    target.write_bytes(target.read_bytes() + b" ")
    r = _reference_verify(hash_type, model, model / "model.sig", key=tmp_path / "k.pub")
    assert r.returncode != 0
    assert "Hash mismatch for" in r.stdout + r.stderr and "config.json" in r.stdout + r.stderr


# --------------------------------------------------- Vault Transit


def test_vault_transit_signing_verifies_with_model_signing(
    tmp_path: Path, openbao: Any, new_name: Callable[[str], str]
) -> None:
    client = openbao.client()
    name = new_name("sign")
    client.secrets.transit.create_key(name=name, key_type="ecdsa-p256", mount_point="transit")
    uri = f"vault://transit/{name}"
    model = make_model(tmp_path / "m")
    signer = VaultTransitSigner(uri, client=client)
    assert "Vault Transit" in repr(signer) and openbao.root_token not in repr(signer)
    sign_model(model, tmp_path / "m.sig", signer)

    # weightguard: public key fetched from Transit
    m = verify_bundle(model, tmp_path / "m.sig", vault_key_policy(uri, client=client))
    assert uri in m.signer
    # model_signing: Transit public key as PEM
    ((_ver, pem),) = vault_public_keys(uri, client=client)
    (tmp_path / "transit.pub").write_bytes(pem)
    r = model_signing(
        "verify",
        "key",
        str(model),
        "--signature",
        str(tmp_path / "m.sig"),
        "--public_key",
        str(tmp_path / "transit.pub"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # after rotation, the old signature still verifies (any version) and new ones too
    client.secrets.transit.rotate_key(name=name, mount_point="transit")
    sign_model(model, tmp_path / "m2.sig", VaultTransitSigner(uri, client=client))
    pol = vault_key_policy(uri, client=client)
    assert f"{uri} v1" in verify_bundle(model, tmp_path / "m.sig", pol).signer
    assert f"{uri} v2" in verify_bundle(model, tmp_path / "m2.sig", pol).signer


def test_vault_transit_refuses_wrong_key_types(
    openbao: Any, new_name: Callable[[str], str]
) -> None:
    from weightguard.errors import KeyProviderError, UnsafeOptionRequired

    client = openbao.client()
    aes = new_name("aes")
    client.secrets.transit.create_key(name=aes, mount_point="transit")
    with pytest.raises(KeyProviderError, match="ecdsa-p256"):
        VaultTransitSigner(f"vault://transit/{aes}", client=client)
    exp = new_name("exp")
    client.secrets.transit.create_key(
        name=exp, key_type="ecdsa-p256", exportable=True, mount_point="transit"
    )
    with pytest.raises(UnsafeOptionRequired, match="exportable"):
        VaultTransitSigner(f"vault://transit/{exp}", client=client)
    with pytest.raises(KeyProviderError, match="not found"):
        VaultTransitSigner(f"vault://transit/{new_name('missing')}", client=client)


# --------------------------------------------------- Sigstore keyless (network, opt-in)


@pytest.mark.network
@pytest.mark.skipif(
    __import__("os").environ.get("WEIGHTGUARD_NETWORK_TESTS") != "1",
    reason="network test: set WEIGHTGUARD_NETWORK_TESTS=1",
)
def test_sigstore_keyless_sign_roundtrip(tmp_path: Path) -> None:
    import os

    from weightguard.signing import SigstoreSigner

    token = os.environ.get("WEIGHTGUARD_SIGSTORE_TOKEN")
    identity = os.environ.get("WEIGHTGUARD_SIGSTORE_IDENTITY")
    issuer = os.environ.get("WEIGHTGUARD_SIGSTORE_ISSUER")
    if not (identity and issuer):
        pytest.skip("set WEIGHTGUARD_SIGSTORE_IDENTITY/ISSUER (and a token or ambient OIDC)")
    model = make_model(tmp_path / "m")
    sign_model(model, tmp_path / "m.sig", SigstoreSigner(token))
    m = verify_bundle(model, tmp_path / "m.sig", SigstoreIdentity(identity, issuer))
    assert m.time_source == "transparency-log"


def test_sigstore_vector_rejects_other_kinds_of_tampering(tmp_path: Path) -> None:
    dst, sig = _copy(V / "v1.1.0-sigstore", V / "v1.1.0-sigstore/model.sig", tmp_path)
    doc = json.loads(sig.read_text())
    del doc["verificationMaterial"]["tlogEntries"]
    sig.write_text(json.dumps(doc))
    with pytest.raises((FormatError, VerificationError), match="tlogEntries"):
        verify_bundle(dst, sig, SigstoreIdentity(*SIGSTORE_ID))
