"""Key providers against the real local services: OpenBao Transit, moto KMS, key files."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.format import build_safetensors
from tests.support.services import (
    MotoKMSServer,
    OpenBaoServer,
    free_port,
    transit_policy_hcl,
)
from weightguard import crypt
from weightguard._internal.keys.providers import WrappedKey, provider_for
from weightguard.errors import (
    ConfigError,
    KeyAccessDenied,
    KeyProviderError,
    KeyUnavailableError,
    KeyVersionRetired,
    WrongKeyError,
)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)


@pytest.fixture
def derived_key(openbao: OpenBaoServer, new_name: Callable[[str], str]) -> str:
    name = new_name("models")
    openbao.client().secrets.transit.create_key(name=name, derived=True, mount_point="transit")
    return name


def _model_dir(root: Path, shards: int = 2, size: int = 10_000) -> Path:
    d = root / "tiny-model"
    d.mkdir()
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        data = os.urandom(size)
        (d / name).write_bytes(build_safetensors({f"layer{i}.w": ("U8", [size], data)}))
        weight_map[f"layer{i}.w"] = name
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": shards * size}, "weight_map": weight_map})
    )
    (d / "config.json").write_text('{"model_type": "tiny"}')
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    return d


def _transit_requests(bao: OpenBaoServer, op: str) -> int:
    assert bao.audit_file is not None
    n = 0
    for line in bao.audit_file.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("type") == "request" and f"transit/{op}/" in entry["request"]["path"]:
            n += 1
    return n


def _records_size(info: dict[str, Any]) -> int:
    """Bytes of records 0..n (everything after the preamble)."""
    return int(info["st_header_size"] + 16 + info["data_size"] + 16 * info["num_chunks"])


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


# --------------------------------------------------------------------------- vault


def test_vault_model_roundtrip_one_round_trip(
    vault_env: OpenBaoServer, derived_key: str, tmp_path: Path
) -> None:
    src = _model_dir(tmp_path, shards=3)
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    uri = f"vault://transit/{derived_key}"
    before = _transit_requests(vault_env, "encrypt")
    res = crypt.encrypt_model(src, enc, uri, chunk_size=4096, context="acme/tiny")
    assert _transit_requests(vault_env, "encrypt") == before + 1  # one batch for 3 shards
    assert res["key"] == {"uri": uri, "key_version": 1, "context": "acme/tiny"}
    shard = "model-00001-of-00003.safetensors"
    assert res["files"][shard]["key"]["provider"] == "vault-transit"
    assert res["files"]["config.json"] == "copied"
    # names kept, index valid and unchanged, shards are artifacts
    assert (enc / "model.safetensors.index.json").read_bytes() == (
        src / "model.safetensors.index.json"
    ).read_bytes()
    assert crypt.is_encrypted(enc / shard) and not crypt.is_encrypted(enc / "config.json")
    before = _transit_requests(vault_env, "decrypt")
    crypt.decrypt_model(enc, dec)
    assert _transit_requests(vault_env, "decrypt") == before + 1  # batch unwrap
    _same_files(src, dec)


def test_vault_context_mismatch_fails(openbao: OpenBaoServer, derived_key: str) -> None:
    p = provider_for(f"vault://transit/{derived_key}", client=openbao.client())
    dk, w = p.generate("model-a")
    assert p.unwrap(w) == dk
    other = WrappedKey(w.provider, w.uri, w.key_version, "model-b", w.ciphertext)
    with pytest.raises(WrongKeyError, match="wrong key or context"):
        p.unwrap(other)


def test_vault_rotation_rewrap_and_min_decryption_version(
    openbao: OpenBaoServer, derived_key: str, tmp_path: Path
) -> None:
    client = openbao.client()
    opts = {"client": client}
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"w": ("U8", [20_000], os.urandom(20_000))}))
    art = tmp_path / "m.enc"
    uri = f"vault://transit/{derived_key}"
    crypt.encrypt_file(src, art, uri, chunk_size=4096, key_options=opts)
    old = art.read_bytes()
    assert crypt.inspect(art)["key"]["key_version"] == 1
    (tmp_path / "old.enc").write_bytes(old)

    client.secrets.transit.rotate_key(name=derived_key, mount_point="transit")
    out = crypt.rewrap(art, key_options=opts)
    assert out["files"][str(art)]["to"]["key_version"] == 2
    new = art.read_bytes()
    info = crypt.inspect(art, verify=True, key_options=opts)
    assert info["key"]["key_version"] == 2 and info["authenticated"]
    # only the header changed: every record (0..n) is byte-identical
    tail = _records_size(info)
    assert old[-tail:] == new[-tail:] and old[:-tail] != new[:-tail]

    client.secrets.transit.update_key_configuration(
        name=derived_key, min_decryption_version=2, mount_point="transit"
    )
    with pytest.raises(KeyVersionRetired, match="rewrap"):
        crypt.decrypt_file(tmp_path / "old.enc", tmp_path / "x", key_options=opts)
    assert not (tmp_path / "x").exists()
    crypt.decrypt_file(art, tmp_path / "ok", key_options=opts)
    assert (tmp_path / "ok").read_bytes() == src.read_bytes()


def test_vault_policy_without_decrypt_is_denied(
    openbao: OpenBaoServer, derived_key: str, tmp_path: Path, new_name: Callable[[str], str]
) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"w": ("U8", [100], os.urandom(100))}))
    uri = f"vault://transit/{derived_key}"
    crypt.encrypt_file(src, tmp_path / "m.enc", uri, key_options={"client": openbao.client()})
    policy = new_name("encrypt-only")
    openbao.write_policy(policy, transit_policy_hcl(derived_key, decrypt=False))
    token = openbao.create_token([policy])
    with pytest.raises(KeyAccessDenied, match="denied"):
        crypt.decrypt_file(
            tmp_path / "m.enc", tmp_path / "out", key_options={"addr": openbao.addr, "token": token}
        )
    assert not (tmp_path / "out").exists()


def test_vault_down_is_unavailable(tmp_path: Path, derived_key: str) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"w": ("U8", [100], os.urandom(100))}))
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KeyUnavailableError, match="cannot reach Vault"):
        crypt.encrypt_file(
            src, tmp_path / "m.enc", f"vault://transit/{derived_key}",
            key_options={"addr": dead, "token": "x"},
        )  # fmt: skip
    assert not (tmp_path / "m.enc").exists()


def test_vault_refuses_non_derived_and_missing_keys(
    openbao: OpenBaoServer, transit_key: str
) -> None:
    p = provider_for(f"vault://transit/{transit_key}", client=openbao.client())
    with pytest.raises(ConfigError, match="not a derived key"):
        p.generate("m")
    p = provider_for("vault://transit/does-not-exist", client=openbao.client())
    with pytest.raises(KeyProviderError, match="does not exist"):
        p.generate("m")


# --------------------------------------------------------------------------- kms


def test_kms_roundtrip_and_context_bound(
    kms: MotoKMSServer, kms_key: str, tmp_path: Path, clean_service_env: pytest.MonkeyPatch
) -> None:
    for k, v in kms.env().items():
        clean_service_env.setenv(k, v)
    src = tmp_path / "m.safetensors"
    src.write_bytes(build_safetensors({"w": ("U8", [9000], os.urandom(9000))}))
    uri = f"awskms://{kms_key}"
    crypt.encrypt_file(src, tmp_path / "m.enc", uri, chunk_size=4096, context="acme/m")
    info = crypt.inspect(tmp_path / "m.enc", verify=True)
    assert info["key"]["provider"] == "aws-kms" and info["key"]["context"] == "acme/m"
    crypt.decrypt_file(tmp_path / "m.enc", tmp_path / "m.dec")
    assert (tmp_path / "m.dec").read_bytes() == src.read_bytes()
    p = provider_for(uri)
    dk, w = p.generate("model-a")
    assert p.unwrap(w) == dk
    with pytest.raises(WrongKeyError, match="encryption"):
        p.unwrap(WrappedKey(w.provider, w.uri, None, "model-b", w.ciphertext))


def test_kms_down_is_unavailable(tmp_path: Path, clean_service_env: pytest.MonkeyPatch) -> None:
    clean_service_env.setenv("AWS_ACCESS_KEY_ID", "testing")
    clean_service_env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    p = provider_for("awskms://1234abcd", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(KeyUnavailableError, match="cannot reach AWS KMS"):
        p.generate("m")


# ----------------------------------------------------------------- rewrap across providers


def test_rewrap_file_to_vault_keeps_records(
    openbao: OpenBaoServer, derived_key: str, tmp_path: Path
) -> None:
    key = crypt.create_key_file(tmp_path / "dev.key")
    src = _model_dir(tmp_path)
    enc = tmp_path / "enc"
    crypt.encrypt_model(src, enc, f"file://{key}", chunk_size=4096)
    shard = enc / "model-00001-of-00002.safetensors"
    before = shard.read_bytes()
    h0 = crypt.inspect(shard)
    crypt.rewrap(
        enc,
        f"vault://transit/{derived_key}",
        data_key=f"file://{key}",
        to_key_options={"client": openbao.client()},
    )
    after = shard.read_bytes()
    h1 = crypt.inspect(shard)
    assert h1["key"]["provider"] == "vault-transit" and h1["key"]["context"] == "tiny-model"
    tail = _records_size(h0)
    assert after[-tail:] == before[-tail:] and len(after) == h1["artifact_size"]
    crypt.decrypt_model(enc, tmp_path / "dec", key_options={"client": openbao.client()})
    _same_files(src, tmp_path / "dec")
