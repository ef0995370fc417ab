"""What every signing method shares: the :class:`Signer` interface, reading a private
key file (bounded, wiped after use), the EC key facts (curve, hash, fingerprint) and the
DER ECDSA signature OMS bundles carry -- on the signing and the verifying side."""

from __future__ import annotations

import abc
import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from weightguard.errors import (
    ConfigError,
    FormatError,
)

_MAX_KEY_FILE = 1 << 20

_CURVE_HASH = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}
_CURVE_NAME = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def ec_hash(public_key: Any, where: str) -> Any:
    """The hash model-signing pairs with an EC key (by curve); refuse anything else."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        # The class name would say "Ed25519PublicKey" even about a private key file.
        kind = type(public_key).__name__.removesuffix("PublicKey") or "unknown"
        raise FormatError(
            f"{where} holds an {kind} key, not an EC (ECDSA) key",
            hint="OMS signatures use ECDSA P-256, P-384 or P-521 keys; create one with "
            "`weightguard keys create --signing-key FILE`",
        )
    name = _CURVE_HASH.get(public_key.curve.name)
    if name is None:
        raise FormatError(
            f"{where}: unsupported curve {public_key.curve.name}",
            hint="use an ECDSA P-256, P-384 or P-521 key",
        )
    algos: dict[str, hashes.HashAlgorithm] = {
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }
    return algos[name]


def curve_label(public_key: Any) -> str:
    return _CURVE_NAME.get(getattr(getattr(public_key, "curve", None), "name", ""), "?")


def key_fingerprint(public_key: Any) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo (weightguard's key fingerprint)."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_der_signature(sig: bytes, public_key: Any, where: str) -> None:
    """Refuse anything that is not a strict DER ECDSA signature (raw r||s included)."""
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )

    coord = (public_key.curve.key_size + 7) // 8
    try:
        r, s = decode_dss_signature(sig)
        ok = encode_dss_signature(r, s) == sig
    except ValueError:
        ok = False
    if not ok:
        looks_raw = len(sig) == 2 * coord
        raise FormatError(
            f"{where} is not a DER-encoded ECDSA signature"
            + (f" (it looks like a raw r||s value of {len(sig)} bytes)" if looks_raw else ""),
            hint="OMS/model-signing signatures are ASN.1 DER; re-sign with a conforming signer",
        )


def read_secret_file(path: str | os.PathLike[str], what: str) -> bytearray:
    p = Path(path)
    try:
        st = p.stat()
        if st.st_size > _MAX_KEY_FILE:
            raise ConfigError(f"{what} {p} is larger than 1 MiB; is it really a PEM file?")
        return bytearray(p.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror}") from exc


def load_private_key(pem: bytearray, password: bytes | bytearray | None, what: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(
            bytes(pem), bytes(password) if password is not None else None
        )
    except TypeError as exc:
        msg = str(exc)
        if "encrypted" in msg.lower() and password is None:
            raise ConfigError(
                f"{what} is encrypted and no password was given",
                hint="give the environment variable that holds it: --password-env VAR",
            ) from None
        raise ConfigError(f"{what}: {msg}") from None
    except ValueError:
        raise ConfigError(
            f"{what} could not be loaded (not a PEM private key, or wrong password)",
            hint="check the key file and its password",
        ) from None
    try:
        ec_hash(key.public_key(), what)
    except FormatError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None
    return key


class Signer(abc.ABC):
    """Produces an OMS bundle for a statement payload."""

    @abc.abstractmethod
    def make_bundle(self, payload: bytes) -> bytes:
        """Sign the DSSE PAE of ``payload`` and return the bundle JSON bytes."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Human description of the signer (never secret)."""

    def check_time(self, when: datetime) -> None:  # noqa: B027 - optional hook
        """Raise if the signer may not sign at ``when`` (e.g. certificate validity)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def ec_sign(private_key: Any, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    return bytes(private_key.sign(data, ec.ECDSA(ec_hash(private_key.public_key(), "key"))))
