"""safe_open on models signed by model_signing alone (whole-file digests): the first read
of a file's tensor verifies the whole file once; later reads are served from it."""
# ruff: noqa: F811, SIM118  (fixtures imported from tests.support.load; SafeOpen is no dict)

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.lazy import model_signing_sign, release_file, tensors
from tests.support.load import (
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import safe_open
from weightguard._internal.load.model_files import ModelFile
from weightguard.errors import IntegrityError

pytestmark = pytest.mark.skipif(
    not hasattr(ModelFile, "streamed"), reason="the loader does not load whole-file signatures"
)


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.mark.parametrize("encrypted", [True, False])
def test_verified_once_then_served(tmp_path: Path, file_key: str, sign_keys, encrypted) -> None:
    ts = tensors()
    d = tmp_path / "rel"
    art, _ = release_file(
        d, "model.safetensors", ts, key=file_key if encrypted else None, keys=None
    )
    model_signing_sign(d, d / "model.sig", sign_keys)
    audit, sink = memory_audit()
    with safe_open(d, policy=sign_keys.policy(), audit=audit) as f:
        a = f.get_slice("embed.weight")[10:20]
        assert torch.equal(a, ts["embed.weight"][10:20])
        assert events(sink).count("load.ok") == 1  # the whole file, verified in one pass
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), ts[name]), name
        a.fill_(0)  # copies: the kept, verified tensors are not changed
        assert torch.equal(f.get_slice("embed.weight")[10:20], ts["embed.weight"][10:20])
        assert f.stats["bytes_read"] == art.stat().st_size
        assert events(sink).count("load.ok") == 1


def test_a_changed_byte_fails_the_first_read(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = tensors()
    d = tmp_path / "rel"
    art, _ = release_file(d, "model.safetensors", ts, key=None, keys=None)
    model_signing_sign(d, d / "model.sig", sign_keys)
    flip(art, art.stat().st_size - 3)  # in the last tensor; the first read is elsewhere
    audit, sink = memory_audit()
    with safe_open(d, policy=sign_keys.policy(), audit=audit) as f:
        for call in (f.keys, f.metadata, lambda: f.get_slice("embed.weight")):
            with pytest.raises(IntegrityError, match=r"differs from the signed|does not match"):
                call()  # the header's names and shapes are unverified until the file is
        assert events(sink).count("tamper.detected") == 3  # once per refused call
    assert last(sink, "load.ok")["extra"]["tensors"] == 0
