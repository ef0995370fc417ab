"""A small release built with the real tools: encrypted (file key provider), watermarked
through the secure loader, signed; and an access log written by the real AuditLog with
signed checkpoints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.audit_logs import Expected, write_log
from tests.support.format import build_safetensors
from tests.support.load import SignKeys, make_sign_keys, sign

BASE_MODEL = "meta-llama/Llama-3.2-1B"


@dataclass
class Release:
    path: Path
    keys: SignKeys
    data_key: Path
    watermark_key: Path
    log: Path
    checkpoint_pub: Path
    expected: Expected


def make_plain(d: Path) -> Path:
    d.mkdir(parents=True)
    t = {f"layer{i}.weight": ("F32", [32, 64], os.urandom(32 * 64 * 4)) for i in range(3)}
    (d / "model.safetensors").write_bytes(build_safetensors(t, {"format": "pt"}))
    (d / "config.json").write_text(json.dumps({"_name_or_path": BASE_MODEL, "hidden_size": 64}))
    (d / "README.md").write_text(f"---\nbase_model: {BASE_MODEL}\n---\n# tiny\n")
    return d


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    from weightguard import audit, crypt

    d = tmp_path_factory.mktemp("report")
    plain = make_plain(d / "plain")
    data_key = crypt.create_key_file(d / "data.key")
    enc = d / "encrypted"
    crypt.encrypt_model(plain, enc, f"file://{data_key}", context="acme/tiny")
    keys = make_sign_keys(d, "release")
    sign(enc, enc / "model.sig", keys)
    wm_key = crypt.create_key_file(d / "wm.key")
    out = d / "release"
    try:
        from weightguard import watermark

        watermark.embed_file(
            enc,
            out,
            f"file://{wm_key}",
            load_options={"policy": keys.policy(), "data_key": f"file://{data_key}"},
        )
    except ImportError:  # no torch: the same release without the watermark
        import shutil

        shutil.copytree(enc, out)
        (out / "model.sig").unlink()
    sign(out, out / "model.sig", keys)
    cp = d / "audit-cp.pem"
    audit.generate_checkpoint_key(os.fspath(cp))
    log = d / "audit.jsonl"
    exp = write_log(log, cp, 3000, span_days=3.0)
    return Release(out, keys, data_key, wm_key, log, Path(f"{cp}.pub"), exp)
