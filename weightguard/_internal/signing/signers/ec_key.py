"""Signing with an EC private key file (PEM), and creating such a key pair."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from weightguard._internal.foundation.memory import wipe
from weightguard._internal.signing.signers.base import (
    Signer,
    ec_sign,
    load_private_key,
    read_secret_file,
)
from weightguard.errors import (
    ConfigError,
    DestinationError,
)


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
    from weightguard._internal.signing.oms import key_fingerprint

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
        from weightguard._internal.signing.oms import curve_label, key_fingerprint

        return f"EC {curve_label(self.public_key)} key {key_fingerprint(self.public_key)}"

    def make_bundle(self, payload: bytes) -> bytes:
        from weightguard._internal.signing import oms

        sig = ec_sign(self._key, oms.pae(payload))
        return oms.encode_bundle(payload, sig, key_hint=oms.key_hint(self.public_key))
