"""Watermark keys from a real OpenBao: KV v2 field and Transit-HMAC-derived secret."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from weightguard import watermark as wm
from weightguard._internal.watermark.keys import resolve_key
from weightguard.errors import ConfigError, KeyAccessDenied, KeyProviderError


def _key(ref: str, client: Any = None) -> bytes:
    k, owned = resolve_key(ref, vault_client=client)
    try:
        assert owned and ref in repr(k)
        return bytes(k.material)
    finally:
        k.wipe()


def test_kv_v2_key(vault_env: Any, new_name: Any) -> None:
    path = new_name("wm")
    value = "a-long-random-watermark-secret-0123456789"
    vault_env.client().secrets.kv.v2.create_or_update_secret(
        path=path, secret={"key": value}, mount_point="secret"
    )
    ref = f"vault-kv://secret/{path}#key"
    assert _key(ref) == value.encode()
    marked = wm.embed({"w": torch.randn(1024, 512)}, ref)
    assert wm.check(marked, value.encode()).verdict == "present"
    with pytest.raises(KeyProviderError, match="no string field 'nope'"):
        _key(f"vault-kv://secret/{path}#nope")
    with pytest.raises(
        KeyProviderError,
        match=r"path not found while reading the KV secret secret/\S+-missing \(check",
    ):
        _key(f"vault-kv://secret/{path}-missing#key")
    with pytest.raises(ConfigError, match="malformed KV"):
        _key("vault-kv://secret/only-path")


def test_transit_derived_key(vault_env: Any, transit_key: str) -> None:
    ref = f"vault-transit://transit/{transit_key}?context=model-a"
    k1 = _key(ref)
    assert len(k1) == 32 and _key(ref) == k1  # deterministic, never exported
    assert _key(f"vault-transit://transit/{transit_key}?context=model-b") != k1
    client = vault_env.client()
    client.secrets.transit.rotate_key(name=transit_key, mount_point="transit")
    assert _key(ref) == k1  # pinned to version 1: rotation does not change the mark
    assert _key(ref + "&version=2") != k1
    marked = wm.embed({"w": torch.randn(1024, 512)}, ref)
    assert wm.check(marked, k1).verdict == "present"


def test_transit_denied_and_unknown(openbao: Any, transit_key: str) -> None:
    import hvac

    bad = hvac.Client(url=openbao.addr, token="not-a-token")
    with pytest.raises(KeyAccessDenied):
        _key(f"vault-transit://transit/{transit_key}", bad)
    with pytest.raises(KeyProviderError):
        _key("vault-transit://transit/does-not-exist", openbao.client())
