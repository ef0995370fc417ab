"""Signing with a non-exportable Vault/OpenBao Transit key: only the digest travels.

A verifier needs no secret: it trusts the key's public versions
(:func:`vault_public_keys`, what ``policy.vault_key_policy`` builds its anchors from)
and proves the signature as for any EC key (``ec_key.prove_key``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from weightguard._internal.signing.signers.base import Signer, curve_label, ec_hash, key_fingerprint
from weightguard.errors import (
    KeyProviderError,
    UnsafeOptionRequired,
)


def parse_transit_uri(uri: str) -> tuple[str, str]:
    """``vault://<mount>/<key>`` -> (mount, key name) (the one Vault URI rule)."""
    from weightguard._internal.foundation.vault import parse_vault_uri

    return parse_vault_uri(uri, what="Transit key")


def transit_client(client: Any) -> Any:
    if client is not None:
        return client
    from weightguard._internal.foundation.vault import vault_client

    return vault_client()


def vault_public_keys(uri: str, *, client: Any = None) -> list[tuple[int, bytes]]:
    """[(version, PEM)] of a Transit asymmetric key (all versions still held)."""
    from weightguard._internal.foundation.vault import vault_errors

    mount, name = parse_transit_uri(uri)
    c = transit_client(client)
    with vault_errors(f"reading the Transit key {uri}", client=c):
        data = c.secrets.transit.read_key(name=name, mount_point=mount)["data"]
    if not str(data.get("type", "")).startswith("ecdsa-"):
        raise KeyProviderError(
            f"Transit key {uri} has type {data.get('type')!r}; signing needs an ecdsa-p256 key",
            hint=f"create it with: vault write {mount}/keys/{name} type=ecdsa-p256",
        )
    out = []
    for ver, info in sorted(data.get("keys", {}).items(), key=lambda kv: int(kv[0])):
        pem = info.get("public_key") if isinstance(info, dict) else None
        if pem:
            out.append((int(ver), pem.encode("ascii")))
    if not out:
        raise KeyProviderError(f"Transit key {uri} exposes no public key")
    return out


class VaultTransitSigner(Signer):
    """Non-exportable Vault/OpenBao Transit ECDSA key (``vault://<mount>/<key>``).

    The private key never leaves Vault: the PAE is hashed here and Transit signs the
    prehashed digest (``marshaling_algorithm=asn1``, i.e. DER as OMS requires).
    Exportable keys are refused unless ``allow_exportable=True``.
    """

    def __init__(self, uri: str, *, client: Any = None, allow_exportable: bool = False) -> None:
        from cryptography.hazmat.primitives import serialization

        from weightguard._internal.foundation.vault import vault_errors

        self.uri = uri
        self._mount, self._name = parse_transit_uri(uri)
        self._client = transit_client(client)
        with vault_errors(f"reading the Transit key {uri}", client=self._client):
            data = self._client.secrets.transit.read_key(name=self._name, mount_point=self._mount)[
                "data"
            ]
        ktype = str(data.get("type", ""))
        if ktype not in ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521"):
            raise KeyProviderError(
                f"Transit key {uri} has type {ktype!r}; OMS signing needs ecdsa-p256 "
                "(or p384/p521)",
                hint=f"create one with: vault write {self._mount}/keys/{self._name} "
                "type=ecdsa-p256",
            )
        if data.get("exportable") and not allow_exportable:
            raise UnsafeOptionRequired(
                f"Transit key {uri} is exportable: its private key can leave Vault",
                hint="create a non-exportable Transit key for signing",
            )
        self.key_version = int(data.get("latest_version", 0))
        pem = data["keys"][str(self.key_version)]["public_key"].encode("ascii")
        self.public_key: Any = serialization.load_pem_public_key(pem)
        self._hash = ec_hash(self.public_key, f"Transit key {uri}")

    def describe(self) -> str:
        return (
            f"Vault Transit {self.uri} v{self.key_version} (EC {curve_label(self.public_key)} "
            f"{key_fingerprint(self.public_key)})"
        )

    def make_bundle(self, payload: bytes) -> bytes:
        import base64

        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ec

        from weightguard._internal.foundation.vault import vault_errors
        from weightguard._internal.signing import oms

        data = oms.pae(payload)
        digest = hashlib.new(self._hash.name, data).digest()
        with vault_errors(f"signing with the Transit key {self.uri}", client=self._client):
            resp = self._client.secrets.transit.sign_data(
                name=self._name,
                hash_input=base64.b64encode(digest).decode("ascii"),
                key_version=self.key_version,
                hash_algorithm={"sha256": "sha2-256", "sha384": "sha2-384", "sha512": "sha2-512"}[
                    self._hash.name
                ],
                prehashed=True,
                marshaling_algorithm="asn1",
                mount_point=self._mount,
            )
        token = str(resp["data"]["signature"])
        parts = token.split(":")
        if len(parts) != 3 or parts[0] != "vault":
            raise KeyProviderError(f"Transit {self.uri} returned an unexpected signature format")
        sig = base64.b64decode(parts[2])
        try:  # fail closed: never write a bundle that does not verify
            self.public_key.verify(sig, data, ec.ECDSA(self._hash))
        except InvalidSignature:
            raise KeyProviderError(
                f"Transit {self.uri} returned a signature that does not verify with its public key",
                hint="the key may have been rotated during signing; retry",
            ) from None
        return oms.encode_bundle(payload, sig, key_hint=oms.key_hint(self.public_key))
