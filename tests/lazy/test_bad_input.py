"""weightguard.safe_open refuses bad input: typed error, nothing returned, audit event."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support.lazy import record_offset, release_file, tensors
from tests.support.load import (
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import safe_open
from weightguard.errors import ConfigError, IntegrityError
from weightguard.policy import UnsafeNoVerification


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.fixture
def art(tmp_path: Path, file_key: str, sign_keys) -> Path:
    return release_file(tmp_path / "rel", "m.safetensors", tensors(), key=file_key, keys=sign_keys)[
        0
    ]


def _denied(sink, match: str) -> dict:
    rec = last(sink, "load.denied")
    assert rec["outcome"] == "denied" and match in rec["reason"], rec["reason"]
    return rec


@pytest.mark.parametrize("how", ["get_tensor", "get_slice"])
def test_a_name_not_in_the_model(art: Path, sign_keys, how: str) -> None:
    audit, sink = memory_audit()
    with safe_open(art, policy=sign_keys.policy(), audit=audit) as f:
        with pytest.raises(ConfigError, match="no tensor named 'nope'"):
            getattr(f, how)("nope")
        assert f.stats["records_read"] == 0
    _denied(sink, "ConfigError: ")


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (300, "index 300 is out of bounds for dimension 0 with size 300"),
        (-301, "index -301 is out of bounds"),
        ((slice(None), 37), "index 37 is out of bounds for dimension 1"),
        (slice(None, None, -1), "step must be greater than zero"),
        (slice(0, 10, 0), "step cannot be zero"),
        ((1, 1, 1), "too many indices"),
        (1.5, "only integers, slices"),
        ("rows", "cannot index"),
    ],
)
def test_indices_safetensors_refuses_are_refused_before_reading(
    art: Path, sign_keys, index, match: str
) -> None:
    audit, sink = memory_audit()
    with safe_open(art, policy=sign_keys.policy(), audit=audit) as f:
        s = f.get_slice("embed.weight")
        with pytest.raises(ConfigError, match=match):
            s[index]
        assert f.stats["records_read"] == 0
    rec = _denied(sink, "cannot index tensor 'embed.weight'")
    assert rec["object"]["uri"] == str(art)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_record_failing_its_digest_in_the_middle_of_a_slice(
    tmp_path: Path, file_key: str, sign_keys, workers: int
) -> None:
    ts = {"big": torch.randn(512, 64), "after": torch.ones(3)}  # 128 KiB: 32 records of 4 KiB
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys)
    flip(art, record_offset(art, 9) + 100)  # inside rows 128..160 of "big"
    audit, sink = memory_audit()
    with safe_open(art, policy=sign_keys.policy(), audit=audit, workers=workers) as f:
        with pytest.raises(IntegrityError, match="chunk digest does not match") as e:
            f.get_slice("big")[100:200]
        assert e.value.chunk == 9
        # records outside the damaged one still load, each checked
        assert torch.equal(f.get_slice("big")[:100], ts["big"][:100])
        assert torch.equal(f.get_tensor("after"), ts["after"])
    rec = last(sink, "tamper.detected")
    assert rec["object"]["chunk"] == 9 and rec["object"]["file"] == str(art)
    assert events(sink).count("tamper.detected") == 1  # audited once


def test_a_record_failing_its_tag_though_its_digest_matches(
    tmp_path: Path, file_key: str, sign_keys
) -> None:
    # The ciphertext was changed BEFORE signing: the signed digest matches, the GCM tag
    # does not (CTR is malleable: a digest alone would let chosen bits flip).
    ts = {"big": torch.randn(512, 64)}
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=None)
    flip(art, record_offset(art, 5) + 7)
    sign(art, art.with_name(art.name + ".sig"), sign_keys)
    audit, sink = memory_audit()
    with (
        safe_open(art, policy=sign_keys.policy(), audit=audit) as f,
        pytest.raises(IntegrityError, match="record 5 failed authentication"),
    ):
        f.get_tensor("big")
    assert last(sink, "tamper.detected")["object"]["chunk"] == 5


def test_an_unsigned_artifact_still_checks_every_tag(tmp_path: Path, file_key: str) -> None:
    ts = {"big": torch.randn(512, 64)}
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=None)
    flip(art, record_offset(art, 2) + 1)
    with (
        safe_open(art, policy=UnsafeNoVerification()) as f,
        pytest.raises(IntegrityError, match="record 2 failed authentication"),
    ):
        f.get_slice("big")[0:20]


def test_a_signed_plain_file_with_a_changed_byte(tmp_path: Path, sign_keys) -> None:
    ts = {"big": torch.randn(512, 64)}
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=None, keys=sign_keys)
    n = int.from_bytes(art.read_bytes()[:8], "little")
    flip(art, 8 + n + 70_000)
    with (
        safe_open(art, policy=sign_keys.policy()) as f,
        pytest.raises(IntegrityError, match="chunk digest does not match"),
    ):
        f.get_tensor("big")


def test_a_handle_used_after_close(art: Path, sign_keys) -> None:
    audit, sink = memory_audit()
    with safe_open(art, policy=sign_keys.policy(), audit=audit) as f:
        s = f.get_slice("embed.weight")
    for call in (f.keys, f.metadata, lambda: f.get_tensor("ids"), lambda: s[0:2]):
        with pytest.raises(ConfigError, match="on a closed safe_open handle"):
            call()
    assert events(sink)[-1] == "load.denied"
    assert sum(e == "load.denied" for e in events(sink)) == 4


def test_use_after_close_is_audited_in_the_environment_log(
    art: Path, sign_keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", str(log))
    with safe_open(art, policy=sign_keys.policy()) as f:
        f.get_tensor("ids")
    with pytest.raises(ConfigError, match="closed"):
        f.get_tensor("ids")
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    names = [r.get("event") for r in recs if "event" in r]
    assert "load.ok" in names and names[-1] == "load.denied"
