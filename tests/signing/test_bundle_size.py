"""sign_model refuses a signature bigger than any verifier reads (oms.MAX_BUNDLE_BYTES),
before signing: too many chunk digests for the model's size (docs/lazy.md, Record size)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightguard._internal.signing import oms
from weightguard.errors import ConfigError
from weightguard.signing import KeySigner, create_signing_key, sign_model


class _Counting(KeySigner):
    bundles = 0

    def make_bundle(self, payload: bytes) -> bytes:
        type(self).bundles += 1
        return super().make_bundle(payload)


def test_too_many_digests_refused_before_signing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64 * 1024)}, str(model))  # 256 KiB: 64 chunks of 4 KiB
    create_signing_key(tmp_path / "k.pem", tmp_path / "k.pub")
    signer = _Counting.from_file(tmp_path / "k.pem")
    monkeypatch.setattr(oms, "MAX_BUNDLE_BYTES", 6000)
    sig = tmp_path / "model.safetensors.sig"
    with pytest.raises(ConfigError, match=r"\(65 chunk digests\), over the 6000 bytes a verifier"):
        sign_model(model, sig, signer, chunk_size=4096)
    assert not sig.exists()
    assert _Counting.bundles == 0  # refused before the signer was asked
    sign_model(model, sig, signer, chunk_size=64 * 1024)  # 5 digests fit
    assert sig.exists() and sig.stat().st_size <= 6000
    assert _Counting.bundles == 1
