"""The verifier proves, the policy narrows; X.509 paths by standard rules; one verdict
with model_signing on resource digests (issue 12, items 3, 4 and 9)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.signing import make_model, model_signing, payload_of, write_key
from weightguard.errors import IntegrityError, PolicyError
from weightguard.policy import (
    AllOf,
    AnyOf,
    CertificateIdentity,
    ChainRoot,
    Policy,
    PolicyResult,
    PublicKey,
    UnsafeNoVerification,
)
from weightguard.signing import CertificateSigner, KeySigner, sign_model, verify_bundle
from weightguard.verifying import VerifiedSignature

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ku(*, ca: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _cert(
    cn: str,
    key: Any,
    issuer_cn: str,
    issuer_key: Any,
    *,
    ca: bool,
    path_length: int | None = None,
    extra: tuple[tuple[Any, bool], ...] = (),
) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=30))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_ku(ca=ca), critical=True)
    )
    if not ca:
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer_key, hashes.SHA256())


def _chain(
    tmp: Path,
    *,
    root_path_length: int | None = None,
    root_extra: tuple[tuple[Any, bool], ...] = (),
    leaf_extra: tuple[tuple[Any, bool], ...] = (),
) -> dict[str, Path]:
    """root -> intermediate -> leaf with the given twists; PEM paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root_k, int_k = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf_k = write_key(tmp, "leaf")
    root = _cert("root", root_k, "root", root_k, ca=True, path_length=root_path_length,
                 extra=root_extra)  # fmt: skip
    inter = _cert("intermediate", int_k, "root", root_k, ca=True)
    leaf = _cert("signer", leaf_k, "intermediate", int_k, ca=False, extra=leaf_extra)
    out = {}
    for name, c in (("root", root), ("intermediate", inter), ("leaf_cert", leaf)):
        out[name] = tmp / f"{name}.crt"
        out[name].write_bytes(c.public_bytes(serialization.Encoding.PEM))
    out["leaf_key"] = tmp / "leaf.pem"
    return out


def _sign_with_chain(tmp: Path, chain: dict[str, Path]) -> tuple[Path, Path]:
    model = make_model(tmp / "m")
    sig = tmp / "m.sig"
    signer = CertificateSigner.from_files(
        chain["leaf_key"], chain["leaf_cert"], [chain["intermediate"]]
    )
    sign_model(model, sig, signer)
    return model, sig


def _model_signing_cert(model: Path, sig: Path, root: Path) -> Any:
    return model_signing(
        "verify", "certificate", str(model), "--signature", str(sig),
        "--certificate_chain", str(root),
    )  # fmt: skip


# ---------------------------------------------------------------- X.509 paths (item 3)


def test_root_path_length_zero_refuses_an_intermediate(tmp_path: Path) -> None:
    """pathLenConstraint=0 on the root allows no intermediate CA below it: weightguard,
    cryptography and model_signing all refuse the chain."""
    chain = _chain(tmp_path, root_path_length=0)
    model, sig = _sign_with_chain(tmp_path, chain)
    with pytest.raises(PolicyError) as exc:
        verify_bundle(model, sig, ChainRoot(chain["root"]))
    assert "no path from CN=signer to a trusted root (CN=root)" in exc.value.message
    r = _model_signing_cert(model, sig, chain["root"])
    assert r.returncode != 0, r.stdout + r.stderr
    # the same chain without the constraint verifies in both
    ok = tmp_path / "ok"
    ok.mkdir()
    chain = _chain(ok, root_path_length=1)
    model, sig = _sign_with_chain(ok, chain)
    assert verify_bundle(model, sig, ChainRoot(chain["root"])).signer.startswith(
        "certificate CN=signer (issued by CN=intermediate)"
    )
    r = _model_signing_cert(model, sig, chain["root"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_name_constraints_are_enforced(tmp_path: Path) -> None:
    from cryptography import x509

    permitted = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("models.example.com")], excluded_subtrees=None
    )
    san = x509.SubjectAlternativeName([x509.DNSName("evil.example.org")])
    chain = _chain(tmp_path, root_extra=((permitted, True),), leaf_extra=((san, False),))
    model, sig = _sign_with_chain(tmp_path, chain)
    with pytest.raises(PolicyError, match="no path from CN=signer"):
        verify_bundle(model, sig, ChainRoot(chain["root"]))
    r = _model_signing_cert(model, sig, chain["root"])  # the reference refuses it too
    assert r.returncode != 0, r.stdout + r.stderr


def test_unknown_critical_extension_in_leaf_is_refused(tmp_path: Path) -> None:
    from cryptography import x509

    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    chain = _chain(tmp_path, leaf_extra=((odd, True),))
    model, sig = _sign_with_chain(tmp_path, chain)
    with pytest.raises(PolicyError, match="no path from CN=signer"):
        verify_bundle(model, sig, ChainRoot(chain["root"]))
    r = _model_signing_cert(model, sig, chain["root"])  # the reference refuses it too
    assert r.returncode != 0, r.stdout + r.stderr


def test_issuer_without_key_cert_sign_is_refused(tmp_path: Path) -> None:
    """An end-entity certificate (no CA, no keyCertSign) cannot issue the signer's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root_k, mid_k = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf_k = write_key(tmp_path, "leaf")
    root = _cert("root", root_k, "root", root_k, ca=True)
    mid = _cert("not-a-ca", mid_k, "root", root_k, ca=False)
    leaf = _cert("signer", leaf_k, "not-a-ca", mid_k, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "root.crt").write_bytes(root.public_bytes(pem))
    (tmp_path / "mid.crt").write_bytes(mid.public_bytes(pem))
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(pem))
    model = make_model(tmp_path / "m")
    signer = CertificateSigner.from_files(
        tmp_path / "leaf.pem", tmp_path / "leaf.crt", [tmp_path / "mid.crt"]
    )
    sign_model(model, tmp_path / "m.sig", signer)
    with pytest.raises(PolicyError, match="no path from CN=signer"):
        verify_bundle(model, tmp_path / "m.sig", ChainRoot(tmp_path / "root.crt"))


# ------------------------------------------------- the verifier proves (item 4)


class _SaysYes(Policy):
    """A user-written policy that 'accepts' without any cryptography."""

    def describe(self) -> str:
        return "says yes"

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        return PolicyResult(ok=True, signer="trust me")


class _SaysNo(Policy):
    def describe(self) -> str:
        return "says no"

    def check(self, verified: VerifiedSignature) -> PolicyResult:
        return PolicyResult(ok=False, reasons=("not this release",))


@pytest.fixture
def forged(tmp_path: Path) -> dict[str, Any]:
    """A model signed by an attacker's key, and the key the caller actually trusts."""
    model = make_model(tmp_path / "m")
    write_key(tmp_path, "attacker")
    write_key(tmp_path, "release")
    sign_model(model, tmp_path / "m.sig", KeySigner.from_file(tmp_path / "attacker.pem"))
    return {
        "model": model,
        "sig": tmp_path / "m.sig",
        "release": PublicKey.from_file(tmp_path / "release.pub"),
        "attacker": PublicKey.from_file(tmp_path / "attacker.pub"),
    }


def test_user_policy_saying_ok_cannot_pass_an_unverified_bundle(forged: dict[str, Any]) -> None:
    with pytest.raises(PolicyError) as exc:
        verify_bundle(forged["model"], forged["sig"], _SaysYes())
    assert "names no trust anchor" in exc.value.message
    # an anchor that does not prove the signature does not let it through either
    for policy in (AnyOf(_SaysYes(), forged["release"]), forged["release"] | _SaysYes()):
        with pytest.raises(PolicyError, match="signed with another key"):
            verify_bundle(forged["model"], forged["sig"], policy)


def test_a_corrupted_signature_fails_before_any_policy_runs(
    forged: dict[str, Any], tmp_path: Path
) -> None:
    ran: list[str] = []

    class Spy(Policy):
        def describe(self) -> str:
            return "spy"

        def check(self, verified: VerifiedSignature) -> PolicyResult:
            ran.append("ran")
            return PolicyResult(ok=True)

    doc = json.loads(forged["sig"].read_text())
    sig = bytearray(__import__("base64").b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    doc["dsseEnvelope"]["signatures"][0]["sig"] = __import__("base64").b64encode(sig).decode()
    forged["sig"].write_text(json.dumps(doc))
    with pytest.raises(PolicyError):
        verify_bundle(forged["model"], forged["sig"], AllOf(forged["attacker"], Spy()))
    assert ran == []


def test_user_policies_narrow_what_an_anchor_proved(forged: dict[str, Any]) -> None:
    key = forged["attacker"]  # the key this bundle verifies with, as the caller's anchor
    m = verify_bundle(forged["model"], forged["sig"], key & _SaysYes())
    # the signer reported (and audited) is what was proven, not the policy's words
    assert m.signer == key.describe() and not m.unsafe
    with pytest.raises(PolicyError, match="not this release"):
        verify_bundle(forged["model"], forged["sig"], key & _SaysNo())


def test_unsafe_no_verification_stays_the_one_way_out(forged: dict[str, Any]) -> None:
    m = verify_bundle(forged["model"], forged["sig"], UnsafeNoVerification())
    assert m.unsafe and m.signer == "UNVERIFIED (UnsafeNoVerification)"
    assert (
        m.files["model.safetensors"].size == (forged["model"] / "model.safetensors").stat().st_size
    )


def test_policy_module_does_not_import_signing() -> None:
    """The import cycle policy <-> signing is gone (signing imports policy, not back)."""
    import subprocess
    import sys

    code = (
        "import sys, weightguard.policy, weightguard.verifying; "
        "print('weightguard.signing' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_certificate_identity_narrows_a_verified_chain(tmp_path: Path) -> None:
    from cryptography import x509

    san = x509.SubjectAlternativeName([x509.RFC822Name("release@example.com")])
    chain = _chain(tmp_path, leaf_extra=((san, False),))
    model, sig = _sign_with_chain(tmp_path, chain)
    root = ChainRoot(chain["root"])
    for ident in ("release@example.com", "CN=signer"):
        assert verify_bundle(model, sig, root & CertificateIdentity(ident)).kind == "x509"
    with pytest.raises(PolicyError, match="the verified leaf names CN=signer"):
        verify_bundle(model, sig, root & CertificateIdentity("other@example.com"))
    # alone it names no trust anchor, so it proves nothing
    with pytest.raises(PolicyError, match="names no trust anchor"):
        verify_bundle(model, sig, CertificateIdentity("release@example.com"))


# ---------------------------------------- one verdict with model_signing (item 9)


def test_wrong_resource_digest_with_right_chunk_digests_is_refused(tmp_path: Path) -> None:
    """A signer (or a bug) signs chunk digests of the real bytes but a different OMS
    resource digest: model_signing refuses it, so weightguard's full verify does too."""
    model = make_model(tmp_path / "m")
    write_key(tmp_path, "k")
    signer = KeySigner.from_file(tmp_path / "k.pem")
    sig = tmp_path / "m.sig"
    sign_model(model, sig, signer)
    payload = payload_of(sig)
    for r in payload["predicate"]["resources"]:
        if r["name"] == "model.safetensors":
            r["digest"] = hashlib.sha256(b"other bytes").hexdigest()
    h = hashlib.sha256()
    for r in payload["predicate"]["resources"]:
        h.update(bytes.fromhex(r["digest"]))
    payload["subject"][0]["digest"]["sha256"] = h.hexdigest()
    sig.write_bytes(signer.make_bundle(json.dumps(payload).encode()))
    policy = PublicKey.from_file(tmp_path / "k.pub")
    with pytest.raises(IntegrityError) as exc:
        verify_bundle(model, sig, policy)
    assert "content differs from the signed SHA256 digest" in exc.value.message
    assert "model.safetensors" in str(exc.value)
    r = model_signing(
        "verify",
        "key",
        str(model),
        "--signature",
        str(sig),
        "--public_key",
        str(tmp_path / "k.pub"),
    )
    assert r.returncode != 0, r.stdout + r.stderr
