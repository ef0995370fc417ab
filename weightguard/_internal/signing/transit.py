"""Vault/OpenBao Transit signing keys: URI parsing and public keys (no secret needed).

Shared by the signer (``signing.VaultTransitSigner``) and the policy that trusts a
Transit key (``policy.vault_key_policy``), so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from weightguard.errors import KeyProviderError


def parse_transit_uri(uri: str) -> tuple[str, str]:
    """``vault://<mount>/<key>`` -> (mount, key name) (the one Vault URI rule)."""
    from weightguard._internal.foundation.vault import parse_vault_uri

    return parse_vault_uri(uri, what="Transit key")


def transit_client(client: Any) -> Any:
    if client is not None:
        return client
    from weightguard._internal.foundation.vault import vault_client

    return vault_client()


def transit_public_keys(uri: str, *, client: Any = None) -> list[tuple[int, bytes]]:
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
