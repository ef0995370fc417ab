"""Co-signing: `sign` never drops a signature; a release carries several; a policy needs all.

The release team signs ``model.sig``; the security team adds ``model.sig.d/security.sig``
with ``sign --co-sign security``.  ``weightguard verify --require-all`` (and the loader,
with ``CoSigned``) needs a signature of its own from each; the real ``model_signing``
CLI still verifies the primary bundle, and the co-signature, with the other present.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import SeaweedS3Server
from tests.support.signing import make_model, model_signing, write_key
from weightguard.errors import ConfigError, VerificationError
from weightguard.policy import CoSigned, PublicKey
from weightguard.signing import KeySigner, sign_model, verify_bundle


def wg(*args: str, log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightguard_cli", *args, "--audit-log", str(log)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def release(tmp_path: Path) -> Path:
    model = make_model(tmp_path / "m")
    for who in ("release", "security", "other"):
        write_key(tmp_path, who)
    return model


def test_sign_never_replaces_a_signature_silently(release: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    sig = release / "model.sig"
    r = wg("sign", str(release), "--signing-key", str(tmp_path / "release.pem"), log=log)
    assert r.returncode == 0, r.stderr
    first = sig.read_bytes()
    r = wg("sign", str(release), "--signing-key", str(tmp_path / "security.pem"), log=log)
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: {sig} already exists: weightguard never replaces")
    assert "--co-sign NAME" in r.stderr and "--replace" in r.stderr
    assert sig.read_bytes() == first  # untouched
    with pytest.raises(ConfigError, match="already exists"):
        sign_model(release, sig, KeySigner.from_file(tmp_path / "security.pem"), replace=False)
    r = wg(
        "sign", str(release), "--signing-key", str(tmp_path / "security.pem"), "--replace",
        log=log,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sig.read_bytes() != first
    verify_bundle(release, sig, PublicKey.from_file(tmp_path / "security.pub"))


def test_release_and_security_team_both_required(release: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    rel, sec = str(tmp_path / "release.pem"), str(tmp_path / "security.pem")
    assert wg("sign", str(release), "--signing-key", rel, log=log).returncode == 0
    primary = (release / "model.sig").read_bytes()
    r = wg("sign", str(release), "--signing-key", sec, "--co-sign", "security", log=log)
    assert r.returncode == 0, r.stderr
    cosig = release / "model.sig.d" / "security.sig"
    assert cosig.is_file() and (release / "model.sig").read_bytes() == primary
    # the same co-signature name again: refused too
    r = wg("sign", str(release), "--signing-key", sec, "--co-sign", "security", log=log)
    assert r.returncode == 1 and "already exists" in r.stderr

    both = ["--trust-key", str(tmp_path / "release.pub"), "--trust-key"]
    sec_pub, all_ = str(tmp_path / "security.pub"), "--require-all"
    r = wg("verify", str(release), *both, sec_pub, all_, "--json", log=log)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verified"] and out["signer"].count(";") == 1
    # left out of every signature (their ignore_paths): present, not covered
    assert out["uncovered"] == ["model.sig.d/security.sig"]
    events = [json.loads(x) for x in log.read_bytes().splitlines()]
    ok = [e for e in events if e["event"] == "verify.ok"][-1]
    assert ok["extra"]["bundles"] == ["model.sig", "model.sig.d/security.sig"]
    # any one of them is enough without --require-all; with it, a missing one is not
    r = wg("verify", str(release), *both, str(tmp_path / "other.pub"), "--require-all", log=log)
    assert r.returncode == 1
    assert "not signed by every required signer" in r.stderr and "other.pub" in r.stderr
    assert [json.loads(x) for x in log.read_bytes().splitlines()][-1]["event"] == "verify.failed"
    # one signer cannot stand for two
    r = wg("verify", str(release), *both, str(tmp_path / "release.pub"), "--require-all", log=log)
    assert r.returncode == 1 and "not signed by every required signer" in r.stderr
    r = wg("verify", str(release), "--trust-key", str(tmp_path / "release.pub"), all_, log=log)
    assert r.returncode == 2 and "at least two trust anchors" in r.stderr

    # the reference verifier still accepts each bundle with the other one present
    for bundle, pub in ((release / "model.sig", "release.pub"), (cosig, "security.pub")):
        ref = model_signing(
            "verify", "key", str(release), "--signature", str(bundle),
            "--public_key", str(tmp_path / pub),
        )  # fmt: skip
        assert ref.returncode == 0, ref.stdout + ref.stderr


def test_co_signatures_must_sign_the_same_contents(release: Path, tmp_path: Path) -> None:
    sign_model(release, release / "model.sig", KeySigner.from_file(tmp_path / "release.pem"))
    cfg = release / "config.json"
    original = cfg.read_bytes()
    cfg.write_text('{"hidden": 65}')  # the security team signed something else
    (release / "model.sig.d").mkdir()
    sign_model(
        release,
        release / "model.sig.d" / "security.sig",
        KeySigner.from_file(tmp_path / "security.pem"),
    )
    cfg.write_bytes(original)
    policy = CoSigned(
        PublicKey.from_file(tmp_path / "release.pub"),
        PublicKey.from_file(tmp_path / "security.pub"),
    )
    for hash_files in (True, False):  # found before any byte is read
        with pytest.raises(VerificationError, match=r"sign different contents .*config\.json"):
            verify_bundle(release, release / "model.sig", policy, hash_files=hash_files)
    # a CoSigned policy applied to one bundle refuses (one bundle carries one signature)
    from weightguard.verifying import verify_signature

    with pytest.raises(VerificationError, match="2 signatures are required"):
        from weightguard._internal.signing import oms

        b = oms.parse_bundle((release / "model.sig").read_bytes(), path="model.sig")
        verify_signature(b, policy, path="model.sig")


def test_the_loader_requires_every_signer(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from tests.support.load import memory_audit
    from weightguard import loader

    model = tmp_path / "m"
    model.mkdir()
    save_file({"w": torch.arange(12, dtype=torch.float32)}, str(model / "model.safetensors"))
    for who in ("release", "security"):
        write_key(tmp_path, who)
    sign_model(model, model / "model.sig", KeySigner.from_file(tmp_path / "release.pem"))
    policy = CoSigned(
        PublicKey.from_file(tmp_path / "release.pub"),
        PublicKey.from_file(tmp_path / "security.pub"),
    )
    audit, sink = memory_audit()
    with pytest.raises(VerificationError, match="not signed by every required signer"):
        loader.load_file(model, policy=policy, audit=audit)
    assert sink.events("load.denied")
    (model / "model.sig.d").mkdir()
    sign_model(
        model,
        model / "model.sig.d" / "security.sig",
        KeySigner.from_file(tmp_path / "security.pem"),
    )
    got = loader.load_file(model, policy=policy, audit=audit)
    assert torch.equal(got["w"], torch.arange(12, dtype=torch.float32))
    assert sink.events("load.ok")[-1]["object"]["signer"].count(";") == 1


def test_the_loader_requires_every_signer_of_a_release_in_s3(
    s3_env: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    from tests.support.load import memory_audit
    from weightguard import loader
    from weightguard.audit import AuditLog, MemorySink
    from weightguard.transfer import push_model

    model = tmp_path / "m"
    model.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(model / "model.safetensors"))
    for who in ("release", "security"):
        write_key(tmp_path, who)
    sign_model(model, model / "model.sig", KeySigner.from_file(tmp_path / "release.pem"))
    (model / "model.sig.d").mkdir()
    sign_model(
        model,
        model / "model.sig.d" / "security.sig",
        KeySigner.from_file(tmp_path / "security.pem"),
    )
    push_model(model, f"s3://{bucket}/m/", audit=AuditLog(MemorySink()))
    policy = CoSigned(
        PublicKey.from_file(tmp_path / "release.pub"),
        PublicKey.from_file(tmp_path / "security.pub"),
    )
    audit, sink = memory_audit()
    got = loader.load_file(f"s3://{bucket}/m/", policy=policy, audit=audit)
    assert torch.equal(got["w"], torch.arange(6, dtype=torch.float32))
    assert sink.events("load.ok")[-1]["object"]["signer"].count(";") == 1
    s3_env.client().delete_object(Bucket=bucket, Key="m/model.sig.d/security.sig")
    with pytest.raises(VerificationError, match="not signed by every required signer"):
        loader.load_file(f"s3://{bucket}/m/", policy=policy, audit=audit)
    assert sink.events("load.denied")


def test_co_signing_a_model_signing_release(tmp_path: Path) -> None:
    """A primary signed by model_signing (its ignore_paths never name model.sig.d):
    ``sign --co-sign`` says what the model_signing CLI then needs, and weightguard
    verifies the primary and ``--require-all`` (co-signatures are signatures, not files
    a signature must cover)."""
    import shutil

    from tests.vectors.oms import restore_untracked

    oms_dir = Path(__file__).resolve().parents[1] / "vectors" / "oms"
    src = oms_dir / "ms-1.0.1" / "key-files-sha256"
    model = tmp_path / "model"
    shutil.copytree(src / "model", model)
    restore_untracked(src, model)
    shutil.copy(src / "model.sig", model / "model.sig")
    write_key(tmp_path, "security")
    log, ms_pub = tmp_path / "audit.jsonl", str(oms_dir / "keys" / "key-pub.pem")
    r = wg("sign", str(model), "--signing-key", str(tmp_path / "security.pem"),
           "--co-sign", "security", log=log)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "model_signing verify` of it now needs --ignore-paths model.sig.d" in r.stderr
    r = wg("verify", str(model), "--trust-key", ms_pub, "--trust-key",
           str(tmp_path / "security.pub"), "--require-all", "--json", log=log)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["uncovered"] == ["model.sig.d/security.sig"]
    assert wg("verify", str(model), "--trust-key", ms_pub, log=log).returncode == 0
    ref = model_signing(
        "verify", "key", str(model), "--signature", str(model / "model.sig"),
        "--public_key", ms_pub, "--ignore-paths", str(model / "model.sig.d"),
    )  # fmt: skip
    assert ref.returncode == 0, ref.stdout + ref.stderr
    # a file in model.sig.d/ that is not a bundle is an ordinary file: not covered
    (model / "model.sig.d" / "notes.sig").write_text("not a bundle")
    r = wg("verify", str(model), "--trust-key", ms_pub, log=log)
    assert r.returncode == 1 and "model.sig.d/notes.sig" in r.stderr
