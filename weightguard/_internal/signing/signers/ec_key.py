"""Signing with an EC private key file (PEM), creating such a key pair, and the proof a
verifier runs with a trusted EC public key (:func:`prove_key`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightguard._internal.foundation.memory import wipe
from weightguard._internal.signing.signers.base import (
    Signer,
    check_der_signature,
    curve_label,
    ec_hash,
    ec_sign,
    key_fingerprint,
    load_private_key,
    read_secret_file,
)
from weightguard.errors import (
    ConfigError,
    DestinationError,
    FormatError,
)

if TYPE_CHECKING:
    from weightguard._internal.signing.oms import Bundle


def create_signing_key(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str] | None = None,
    *,
    curve: str = "P-256",
) -> str:
    """Write a new EC signing key pair: private PKCS#8 PEM (0600), public PEM
    (``<private>.pub`` by default, 0644); return the key fingerprint ``sign`` prints.

    Neither file is replaced: an existing path is refused before anything is written.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from weightguard._internal.foundation.atomic import atomic_write

    curves: dict[str, ec.EllipticCurve] = {
        "P-256": ec.SECP256R1(),
        "P-384": ec.SECP384R1(),
        "P-521": ec.SECP521R1(),
    }
    if curve not in curves:
        raise ConfigError(f"curve {curve!r} is not supported", hint="use P-256, P-384 or P-521")
    pub_path = Path(public_path) if public_path is not None else Path(f"{private_path}.pub")
    for p in (Path(private_path), pub_path):
        if p.exists():
            raise DestinationError(f"{p} already exists", hint="choose another path or remove it")
    key = ec.generate_private_key(curves[curve])
    pem = bytearray(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    try:
        with atomic_write(private_path, mode=0o600, overwrite=False) as f:
            f.write(pem)
    finally:
        wipe(pem)
    public = key.public_key()
    try:
        with atomic_write(pub_path, mode=0o644, overwrite=False) as f:
            f.write(
                public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
    except BaseException:
        # A private key whose public half was never written is of no use: remove it.
        Path(private_path).unlink(missing_ok=True)
        raise
    return key_fingerprint(public)


class KeySigner(Signer):
    """EC private key (P-256/384/521, PEM, optionally password-protected)."""

    def __init__(self, private_key: Any) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], password: bytes | bytearray | str | None = None
    ) -> KeySigner:
        pem = read_secret_file(path, "private key file")
        pw = bytearray(password.encode("utf-8")) if isinstance(password, str) else password
        try:
            return cls(load_private_key(pem, pw, f"private key file {path}"))
        finally:
            wipe(pem)
            if isinstance(pw, bytearray):
                wipe(pw)

    def describe(self) -> str:
        return f"EC {curve_label(self.public_key)} key {key_fingerprint(self.public_key)}"

    def make_bundle(self, payload: bytes) -> bytes:
        from weightguard._internal.signing import oms

        sig = ec_sign(self._key, oms.pae(payload))
        return oms.encode_bundle(payload, sig, key_hint=oms.key_hint(self.public_key))


# ------------------------------------------------------------------------ verification


def prove_key(bundle: Bundle, public_key: Any, *, path: str, check_hint: bool) -> None:
    """Step 3 with an EC public key: the bundle's DSSE signature verifies with it.

    ``check_hint`` (key-signed bundles): the bundle's unsigned key material
    (``publicKey.hint``, or ``rawBytes`` / ``keyDetails`` of model_signing 0.3.1 ..
    1.0.1) must describe this key.  Raises FormatError saying why it does not verify.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from weightguard._internal.signing import oms

    fp = key_fingerprint(public_key)
    where = f"{path}: dsseEnvelope.signatures[0].sig"
    algo = ec_hash(public_key, f"{path}: verification key {fp}")
    if check_hint:
        _check_key_material(bundle, public_key, fp, path=path)
    check_der_signature(bundle.signature, public_key, where)
    # model_signing's order: the DSSE PAE, then v0.2.0's broken one (certificate
    # bundles of that release hashed with SHA-256 whatever the curve).
    compat_algo = hashes.SHA256() if bundle.kind == "x509" else algo
    for message, h in (
        (oms.pae(bundle.payload), algo),
        (oms.pae_compat(bundle.payload), compat_algo),
    ):
        try:
            public_key.verify(bundle.signature, message, ec.ECDSA(h))
            return
        except InvalidSignature:
            continue
    raise FormatError(
        f"{where} does not verify with key {fp} ({curve_label(public_key)})",
        hint="wrong key, or the signed statement was modified",
    )


def _check_key_material(bundle: Bundle, public_key: Any, fp: str, *, path: str) -> None:
    """publicKey.hint, or rawBytes / keyDetails (model_signing 0.3.1 .. 1.0.1), must
    describe the verifying key: model_signing drops rawBytes / keyDetails unread,
    weightguard refuses a bundle whose unsigned key material says something else."""
    from cryptography.hazmat.primitives import serialization

    from weightguard._internal.signing.oms import KEY_DETAILS, key_hint

    # The hint is model-signing's hash of the PEM text: shown, it would look like a
    # fingerprint in another format than the one `sign` prints.
    other_key = FormatError(
        f"{path} was signed with another key, not {fp} ({curve_label(public_key)})",
        hint="the model was signed with a different key",
    )
    if bundle.key_hint is not None and bundle.key_hint != key_hint(public_key):
        raise other_key
    where = f"{path}: verificationMaterial.publicKey"
    if bundle.key_pem is not None:
        try:
            embedded = serialization.load_pem_public_key(bundle.key_pem)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{where}.rawBytes is not a PEM public key") from exc
        if key_fingerprint(embedded) != fp:
            raise other_key
    if bundle.key_details is not None:
        want = KEY_DETAILS.get(getattr(getattr(public_key, "curve", None), "name", ""))
        if bundle.key_details != want:
            raise FormatError(
                f"{where}.keyDetails is {bundle.key_details!r}, but key {fp} needs {want!r}"
            )
