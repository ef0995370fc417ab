"""An encrypted, signed PEFT (LoRA) adapter loads with PEFT, outputs equal to the plain one."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.load import (
    encrypt,
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard.errors import IntegrityError
from weightguard.integrations import safetensors as dropin

# find_spec, not importorskip: importing peft (and transformers with it) at collection
# costs seconds of every `pytest --collect-only`; the tests import it when they run.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="peft is not installed"
)


class _Peft:
    """``peft``, imported on first use."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):  # pytest probes module attributes while collecting
            raise AttributeError(name)
        import peft as real

        return getattr(real, name)


peft: Any = _Peft()


class Base(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.fixture
def adapters(tmp_path: Path, file_key: str, sign_keys) -> tuple[Base, Path, Path]:
    """(base model, plain adapter dir, encrypted + signed release of it)."""
    torch.manual_seed(0)
    base = Base()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], init_lora_weights=False)
    plain = tmp_path / "plain"
    peft.get_peft_model(copy.deepcopy(base), cfg).save_pretrained(plain)
    rel = tmp_path / "release"
    rel.mkdir()
    encrypt(plain / "adapter_model.safetensors", rel / "adapter_model.safetensors", file_key)
    (rel / "adapter_config.json").write_bytes((plain / "adapter_config.json").read_bytes())
    sign(rel, rel / "model.sig", sign_keys)
    return base, plain, rel


def _out(model: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 48).reshape(3, 16)
    with torch.no_grad():
        return model.eval()(x)


def test_verified_adapter_via_the_integration(adapters, sign_keys) -> None:
    from weightguard.integrations.peft import from_pretrained

    base, plain, rel = adapters
    want = _out(peft.PeftModel.from_pretrained(copy.deepcopy(base), plain))
    assert not torch.equal(want, _out(base))  # the adapter changes the outputs
    audit, sink = memory_audit()
    got = _out(from_pretrained(copy.deepcopy(base), rel, policy=sign_keys.policy(), audit=audit))
    assert torch.equal(got, want)
    assert events(sink).count("verify.ok") == 1  # one open: config and weights
    assert not dropin.is_enabled()


def test_unmodified_peft_under_the_dropin(adapters, sign_keys) -> None:
    base, plain, rel = adapters
    want = _out(peft.PeftModel.from_pretrained(copy.deepcopy(base), plain))
    with dropin.enabled(sign_keys.policy()):
        got = _out(peft.PeftModel.from_pretrained(copy.deepcopy(base), rel))
    assert torch.equal(got, want)


def test_a_changed_adapter_config_is_refused(adapters, sign_keys) -> None:
    from weightguard.integrations.peft import from_pretrained

    base, _, rel = adapters
    text = (rel / "adapter_config.json").read_text()
    assert '"lora_alpha": 8,' in text
    # same size, one value: would scale the adapter's effect by 9/8
    (rel / "adapter_config.json").write_text(text.replace('"lora_alpha": 8,', '"lora_alpha": 9,'))
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError, match=r"adapter_config\.json differs from the signed"):
        from_pretrained(copy.deepcopy(base), rel, policy=sign_keys.policy(), audit=audit)
    assert "tamper.detected" in events(sink)


def test_a_changed_adapter_weight_is_refused(adapters, sign_keys) -> None:
    from weightguard.integrations.peft import from_pretrained

    base, _, rel = adapters
    w = rel / "adapter_model.safetensors"
    flip(w, w.stat().st_size - 40)
    with pytest.raises(IntegrityError):
        from_pretrained(copy.deepcopy(base), rel, policy=sign_keys.policy())


def test_an_encrypted_adapter_config_is_decrypted(tmp_path: Path, adapters, sign_keys) -> None:
    """`encrypt --encrypt-other-files` seals adapter_config.json too: the integration
    decrypts it (verified, in memory) instead of failing on ciphertext."""
    from weightguard import crypt
    from weightguard.integrations.peft import from_pretrained

    base, plain, _ = adapters
    key = crypt.create_key_file(tmp_path / "other.key")
    rel = tmp_path / "sealed"
    crypt.encrypt_model(plain, rel, f"file://{key}", encrypt_other_files=True)
    assert not (rel / "adapter_config.json").read_bytes().startswith(b"{")
    sign(rel, rel / "model.sig", sign_keys)
    want = _out(peft.PeftModel.from_pretrained(copy.deepcopy(base), plain))
    got = _out(
        from_pretrained(
            copy.deepcopy(base), rel, policy=sign_keys.policy(), data_key=f"file://{key}"
        )
    )
    assert torch.equal(got, want)
