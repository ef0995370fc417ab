"""CLI (`weightguard watermark embed|check`, `fingerprint compare`) and the release flow
watermark -> encrypt -> sign -> secure load -> check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from weightguard_cli.main import cli

from tests.support import watermark as sup
from weightguard import watermark as wm
from weightguard.errors import ConfigError, WatermarkError

KEY = b"cli-owner-key-0123456789abcdef01"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two MiniLM layers as a safetensors file (real weights, fast)."""
    sd = {
        k: v
        for k, v in sup.minilm().items()
        if k.startswith(("encoder.layer.0.", "encoder.layer.1.", "embeddings.position"))
    }
    p = tmp_path_factory.mktemp("wmcli") / "model.safetensors"
    save_file(sd, str(p), metadata={"format": "pt"})
    return p


def run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    return res.exit_code, res.output


def test_cli_embed_check_json(tmp_path: Path, small_model: Path) -> None:
    keyf = tmp_path / "wm.key"
    keyf.write_bytes(KEY)
    audit = tmp_path / "audit.jsonl"
    out = tmp_path / "marked.safetensors"
    code, text = run(
        [
            "watermark",
            "embed",
            str(small_model),
            "-o",
            str(out),
            "--watermark-key",
            f"file://{keyf}",
            "--json",
            "--audit-log",
            str(audit),
        ]
    )
    assert code == 0, text
    doc = json.loads(text)
    assert doc["tensors_marked"] == 13 and Path(doc["commitment"]).is_file()
    code, text = run(
        [
            "watermark",
            "check",
            str(out),
            "--watermark-key",
            str(keyf),
            "--json",
            "--commitment",
            doc["commitment"],
            "--audit-log",
            str(audit),
        ]
    )
    rep = json.loads(text)
    assert code == 0 and rep["verdict"] == "present" and rep["z"] > 20
    assert rep["commitment_ok"] is True and rep["mode"] == "blind"
    code, text = run(
        [
            "watermark",
            "check",
            str(small_model),
            "--watermark-key",
            str(keyf),
            "--json",
            "--audit-log",
            str(audit),
        ]
    )
    assert json.loads(text)["verdict"] == "absent"
    code, text = run(
        [
            "watermark",
            "check",
            str(out),
            "--watermark-key",
            str(keyf),
            "--original",
            str(small_model),
            "--keys-tested",
            "1000",
            "--audit-log",
            str(audit),
        ]
    )
    assert code == 0 and text.startswith("verdict: present") and "informed" in text
    events = [
        json.loads(line)["event"] for line in audit.read_text().splitlines() if '"event"' in line
    ]
    assert events.count("watermark.check") == 3 and "watermark.embed" in events
    assert KEY.decode() not in audit.read_text()


def test_cli_errors_are_one_line(tmp_path: Path, small_model: Path) -> None:
    from weightguard_cli.main import main

    short = tmp_path / "short.key"
    short.write_bytes(b"x")
    with pytest.raises(SystemExit) as ei:
        main(["watermark", "check", str(small_model), "--watermark-key", str(short)])
    assert ei.value.code == 1


def test_cli_fingerprint_compare(tmp_path: Path, small_model: Path) -> None:
    b = tmp_path / "b.safetensors"
    save_file(sup.gaussian_noise(load_file(str(small_model)), 0.05), str(b))
    code, text = run(["fingerprint", "compare", str(small_model), str(b), "--json"])
    doc = json.loads(text)
    assert code == 0 and doc["verdict"] == "derived" and doc["log10_p"] < -50
    code, text = run(["fingerprint", "compare", str(small_model), str(b)])
    assert text.startswith("verdict: derived")


def test_watermark_then_encrypt_then_secure_load(tmp_path: Path, small_model: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from weightguard import crypt, loader
    from weightguard._internal.keys.providers import create_key_file
    from weightguard.audit import AuditLog, MemorySink
    from weightguard.policy import PublicKey
    from weightguard.signing import KeySigner, sign_model

    kek = tmp_path / "kek.hex"
    create_key_file(kek)
    sk = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / "sign.pem", tmp_path / "sign.pub"
    priv.write_bytes(
        sk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        sk.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    marked = tmp_path / "marked.safetensors"
    wm.embed_file(small_model, marked, KEY)  # 1. embed before encryption
    enc = tmp_path / "release" / "model.safetensors"
    enc.parent.mkdir()
    crypt.encrypt_file(marked, enc, f"file://{kek}")  # 2. encrypt
    sig = enc.with_name("model.safetensors.sig")
    sign_model(enc, sig, KeySigner.from_file(priv))  # 3. sign
    audit = AuditLog(MemorySink())
    tensors = loader.load_file(
        enc, policy=PublicKey.from_file(pub), audit=audit, data_key=f"file://{kek}"
    )  # 4. load
    rep = wm.check(tensors, KEY)  # 5. the mark is on the loaded tensors
    assert rep.verdict == "present" and rep.z > 20
    assert all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point())
    # the encrypted artifact directly (decrypted in memory through the secure loader)
    opts = {"policy": PublicKey.from_file(pub), "audit": audit, "data_key": f"file://{kek}"}
    rep2 = wm.check(enc, KEY, load_options=opts)
    assert rep2.z == pytest.approx(rep.z, abs=1e-6)
    with pytest.raises(WatermarkError, match="needs a verification policy"):
        wm.check(enc, KEY)
    with pytest.raises(WatermarkError, match="needs a verification policy"):
        wm.embed_file(
            enc, tmp_path / "x.safetensors", KEY
        )  # encrypted: see test_watermark_encrypted


def test_check_several_keys_one_pass(tmp_path: Path, small_model: Path) -> None:
    refs = []
    for i in range(3):
        f = tmp_path / f"k{i}.key"
        f.write_bytes(bytes([i + 1]) * 32)
        refs.append(str(f))
    out = tmp_path / "marked.safetensors"
    wm.embed_file(small_model, out, refs[1])
    reps = wm.check_keys(out, refs)
    assert [r.verdict for r in reps] == ["absent", "present", "absent"]
    assert all(r.keys_tested == 3 for r in reps)
    assert reps[1].z == pytest.approx(wm.check(out, refs[1]).z, abs=1e-9)
    assert reps[1].threshold_z == pytest.approx(wm.check(out, refs[1], keys_tested=3).threshold_z)
    with pytest.raises(ConfigError, match="smaller than the keys given"):
        wm.check_keys(out, refs, keys_tested=2)
    args = ["watermark", "check", str(out), "--json", "--audit-log", str(tmp_path / "a.log")]
    for r in refs:
        args += ["--watermark-key", r]
    code, text = run(args)
    doc = json.loads(text)
    assert code == 0 and doc["verdict"] == "present" and doc["keys_tested"] == 3
    assert [d["verdict"] for d in doc["results"]] == ["absent", "present", "absent"]
    assert doc["results"][1]["key_ref"] == refs[1]
