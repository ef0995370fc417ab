"""Signing with an EC key and its X.509 certificate chain (the bundle carries the chain;
verifiers check it with ``ChainRoot`` through ``cryptography.x509.verification``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from weightguard._internal.signing.signers.base import ec_sign
from weightguard._internal.signing.signers.ec_key import KeySigner
from weightguard.errors import (
    ConfigError,
)


class CertificateSigner(KeySigner):
    """EC key + its X.509 certificate + the chain up to (optionally including) the root."""

    def __init__(self, private_key: Any, certificate: Any, chain: Sequence[Any] = ()) -> None:
        super().__init__(private_key)
        from weightguard._internal.signing.oms import key_fingerprint
        from weightguard._internal.signing.x509path import may_sign_code

        if key_fingerprint(certificate.public_key()) != key_fingerprint(self.public_key):
            raise ConfigError(
                "the certificate's public key does not match the private key",
                hint="pass the certificate issued for this key",
            )
        if not may_sign_code(certificate):
            raise ConfigError(
                "the certificate allows neither digitalSignature nor codeSigning",
                hint="issue a certificate with KeyUsage digitalSignature or EKU codeSigning",
            )
        self.certificate = certificate
        self.chain = list(chain)

    @classmethod
    def from_files(
        cls,
        key_path: str | os.PathLike[str],
        cert_path: str | os.PathLike[str],
        chain_paths: Iterable[str | os.PathLike[str]] = (),
        password: bytes | bytearray | str | None = None,
    ) -> CertificateSigner:
        from cryptography import x509

        key = KeySigner.from_file(key_path, password)._key

        def load(p: str | os.PathLike[str]) -> list[Any]:
            try:
                return list(x509.load_pem_x509_certificates(Path(p).read_bytes()))
            except OSError as exc:
                raise ConfigError(f"cannot read certificate file {p}: {exc.strerror}") from exc
            except ValueError as exc:
                raise ConfigError(f"{p}: no PEM certificate found") from exc

        leaf = load(cert_path)
        chain = [c for p in chain_paths for c in load(p)]
        return cls(key, leaf[0], leaf[1:] + chain)

    def describe(self) -> str:
        return f"certificate {self.certificate.subject.rfc4514_string()}"

    def check_time(self, when: datetime) -> None:
        c = self.certificate
        if when < c.not_valid_before_utc:
            raise ConfigError(
                f"signing certificate {c.subject.rfc4514_string()} is not valid until "
                f"{c.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
                hint="wait until it is valid or use a current certificate",
            )
        if when > c.not_valid_after_utc:
            raise ConfigError(
                f"signing certificate {c.subject.rfc4514_string()} expired at "
                f"{c.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                hint="renew the certificate",
            )

    def make_bundle(self, payload: bytes) -> bytes:
        from cryptography.hazmat.primitives import serialization

        from weightguard._internal.signing import oms

        sig = ec_sign(self._key, oms.pae(payload))
        ders = [c.public_bytes(serialization.Encoding.DER) for c in [self.certificate, *self.chain]]
        return oms.encode_bundle(payload, sig, certificates=ders)
