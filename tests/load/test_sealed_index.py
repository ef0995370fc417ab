"""A sharded model whose index `encrypt --encrypt-other-files` sealed still loads when
signed (the verified listing names the shards), and an unverified load is refused."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.support.load import last, memory_audit, sign, sign_keys  # noqa: F401
from weightguard import crypt, loader
from weightguard._internal.format.layout import MAGICS
from weightguard.errors import FormatError
from weightguard.policy import UnsafeNoVerification


def _sharded(d: Path) -> dict[str, torch.Tensor]:
    d.mkdir()
    a, b = {"a.w": torch.randn(64, 64)}, {"b.w": torch.randn(32)}
    save_file(a, d / "model-00001-of-00002.safetensors")
    save_file(b, d / "model-00002-of-00002.safetensors")
    wmap = {"a.w": "model-00001-of-00002.safetensors", "b.w": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    (d / "config.json").write_text("{}")
    return {**a, **b}


def test_sealed_index_signed_loads_unsigned_refused(tmp_path: Path, sign_keys) -> None:
    expected = _sharded(tmp_path / "plain")
    key = crypt.create_key_file(tmp_path / "dev.key")
    uri = f"file://{key}"
    enc = tmp_path / "enc"
    crypt.encrypt_model(tmp_path / "plain", enc, uri, encrypt_other_files=True)
    assert (enc / "model.safetensors.index.json").read_bytes().startswith(MAGICS)
    sign(enc, enc / "model.sig", sign_keys)

    got = loader.load_file(enc, policy=sign_keys.policy(), data_key=uri)
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    (enc / "model.sig").unlink()
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match="the index is encrypted"):
        loader.load_file(enc, policy=UnsafeNoVerification(), data_key=uri, audit=audit)
    assert last(sink, "load.denied")["reason"].startswith("FormatError")
