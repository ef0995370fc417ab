"""What every signing method shares: the :class:`Signer` interface, reading a private
key file (bounded, wiped after use) and the DER ECDSA signature OMS bundles carry."""

from __future__ import annotations

import abc
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from weightguard.errors import (
    ConfigError,
    FormatError,
)

_MAX_KEY_FILE = 1 << 20


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

    from weightguard._internal.signing.oms import ec_hash

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

    from weightguard._internal.signing.oms import ec_hash

    return bytes(private_key.sign(data, ec.ECDSA(ec_hash(private_key.public_key(), "key"))))
