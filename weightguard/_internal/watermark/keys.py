"""Watermark key references: a key file, a Vault/OpenBao KV v2 field, or a secret derived
with Transit HMAC (the Transit key never leaves Vault).

    file://PATH or PATH                        raw bytes of the file (>= 16 bytes)
    vault-kv://MOUNT/PATH#FIELD                UTF-8 bytes of the field (>= 16 bytes)
    vault-transit://MOUNT/KEY?context=C&version=N
        HMAC-SHA256 under Transit key KEY (version N, default 1, so rotation does not
        change the watermark key) of "weightguard-watermark-key-v1\\x00" || C
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from weightguard._internal.watermark.scheme import MIN_KEY_BYTES
from weightguard.errors import ConfigError, KeyProviderError

TRANSIT_LABEL = b"weightguard-watermark-key-v1\x00"


@dataclass(eq=False)
class WatermarkKey:
    """Key material (wiped by `wipe()`); `ref` is the non-secret reference it came from."""

    ref: str
    material: bytearray = field(repr=False)

    def __repr__(self) -> str:
        return f"WatermarkKey(ref={self.ref!r}, {len(self.material)} bytes)"

    def wipe(self) -> None:
        for i in range(len(self.material)):
            self.material[i] = 0

    def __enter__(self) -> WatermarkKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()


def _check_len(ref: str, material: bytearray) -> WatermarkKey:
    if len(material) < MIN_KEY_BYTES:
        n = len(material)
        for i in range(n):
            material[i] = 0
        raise ConfigError(
            f"watermark key {ref} is {n} bytes, fewer than {MIN_KEY_BYTES}",
            hint="use at least 32 random bytes (e.g. `head -c 32 /dev/urandom`)",
        )
    return WatermarkKey(ref, material)


def resolve_key(key: Any, *, vault_client: Any = None) -> tuple[WatermarkKey, bool]:
    """Turn a key argument into a WatermarkKey.  Returns (key, owned): owned keys were
    created here and the caller wipes them."""
    if isinstance(key, WatermarkKey):
        return key, False
    if isinstance(key, bytes | bytearray | memoryview):
        return _check_len("<bytes>", bytearray(key)), True
    if isinstance(key, Path):
        return _from_file(key, f"file://{key}"), True
    if not isinstance(key, str):
        raise ConfigError(
            "watermark key must be bytes, a path or a key URI",
            hint="e.g. file://key.bin, vault-kv://secret/wm#key, vault-transit://transit/wm",
        )
    if key.startswith("file://"):
        return _from_file(Path(unquote(key[len("file://") :])), key), True
    if key.startswith("vault-kv://"):
        return _from_kv(key, vault_client), True
    if key.startswith("vault-transit://"):
        return _from_transit(key, vault_client), True
    if "://" in key:
        raise ConfigError(
            f"unknown watermark key scheme in {key.split('://')[0]}://",
            hint="use file://, vault-kv:// or vault-transit://",
        )
    return _from_file(Path(key), f"file://{key}"), True


def _from_file(path: Path, ref: str) -> WatermarkKey:
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read(1 << 16))
    except OSError as exc:
        raise ConfigError(
            f"cannot read watermark key file {path}: {exc.strerror}",
            hint="check the path and its permissions",
        ) from None
    return _check_len(ref, data)


def _client(vault_client: Any) -> Any:
    if vault_client is not None:
        return vault_client
    try:
        from weightguard._internal.foundation.vault import vault_client as make_client
    except ImportError:  # pragma: no cover - foundation module missing
        raise ConfigError(
            "Vault support is not available in this build", hint="use a file:// watermark key"
        ) from None
    return make_client()


def _map_vault_error(exc: Exception, what: str, client: Any = None) -> Exception:
    # weightguard._internal.foundation.vault is the one place that reads Vault's errors.
    from weightguard._internal.foundation.vault import map_vault_error

    return map_vault_error(exc, f"reading the {what}", client=client)


def _from_kv(ref: str, vault_client: Any) -> WatermarkKey:
    u = urlsplit(ref)
    mount, path, fld = u.netloc, u.path.lstrip("/"), u.fragment
    if not mount or not path or not fld:
        raise ConfigError(
            f"malformed KV key reference {ref}", hint="use vault-kv://MOUNT/PATH#FIELD"
        )
    client = _client(vault_client)
    try:
        resp = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True
        )
    except Exception as exc:
        raise _map_vault_error(exc, f"KV secret {mount}/{path}", client) from None
    value = resp.get("data", {}).get("data", {}).get(fld)
    if not isinstance(value, str):
        raise KeyProviderError(
            f"KV secret {mount}/{path} has no string field {fld!r}",
            hint="store the watermark key as a string field",
        )
    return _check_len(ref, bytearray(value.encode("utf-8")))


def _from_transit(ref: str, vault_client: Any) -> WatermarkKey:
    u = urlsplit(ref)
    mount, name = u.netloc, u.path.strip("/")
    if not mount or not name or "/" in name:
        raise ConfigError(
            f"malformed Transit key reference {ref}",
            hint="use vault-transit://MOUNT/KEY?context=...&version=N",
        )
    q = parse_qs(u.query, keep_blank_values=True)
    context = q.get("context", [""])[0]
    try:
        version = int(q.get("version", ["1"])[0])
    except ValueError:
        raise ConfigError(f"bad version in {ref}", hint="version must be an integer") from None
    data = base64.b64encode(TRANSIT_LABEL + context.encode("utf-8")).decode()
    client = _client(vault_client)
    try:
        resp = client.secrets.transit.generate_hmac(
            name=name, hash_input=data, key_version=version, algorithm="sha2-256", mount_point=mount
        )
    except Exception as exc:
        raise _map_vault_error(exc, f"Transit key {mount}/{name}", client) from None
    hm = str(resp.get("data", {}).get("hmac", ""))
    try:
        prefix, _, b64 = hm.rpartition(":")
        if not prefix.startswith("vault:v"):
            raise ValueError
        material = bytearray(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error):
        raise KeyProviderError(f"Transit HMAC for {mount}/{name} has an unexpected form") from None
    return _check_len(ref, material)
