"""Models in the Hugging Face cache layout: ``snapshots/<rev>/`` files are symlinks into
the repo's ``blobs/``.  They load, verify and fetch; a link leaving the repo is refused
before anything is read.  The cache is built locally (no network) and resolved with
``huggingface_hub.snapshot_download(local_files_only=True)`` itself, which checks that
it is the layout huggingface_hub writes; ``scan_cache_dir`` recognises it too."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    events,
    make_sign_keys,
    memory_audit,
    sign,
    write_st,
)
from weightguard import crypt, loader
from weightguard.errors import IntegrityError, VerificationError
from weightguard.policy import UnsafeNoVerification
from weightguard.transfer import fetch_model

hf = pytest.importorskip("huggingface_hub")
REPO_ID = "org/tiny"
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("hfrel")
    plain = base / "plain"
    plain.mkdir()
    expected = write_st(plain / "model.safetensors", MODEL_LAYOUT, seed=3)
    (plain / "config.json").write_text('{"model_type": "tiny"}')
    (plain / "sub").mkdir()
    (plain / "sub" / "tokenizer.json").write_text('{"v": 1}')
    kek = base / "kek.hex"
    crypt.create_key_file(kek)
    enc = base / "enc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_model(plain, enc, f"file://{kek}", chunk_size=4096)
    keys = make_sign_keys(base, "release")
    sign(enc, enc / "model.sig", keys)
    return {"enc": enc, "expected": expected, "keys": keys, "base": base, "kek": kek}


def build_cache(release_dir: Path, cache: Path) -> Path:
    """The hub cache for ``release_dir``: blobs by content hash, relative links."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=REPO_ID, repo_type="model")
    blobs, snap = repo / "blobs", repo / "snapshots" / REV
    blobs.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    for f in sorted(release_dir.rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(release_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return cache


@pytest.fixture(autouse=True)
def _allow_release_key(monkeypatch: pytest.MonkeyPatch, release: dict[str, Any]) -> None:
    # The artifacts name a dev key file; the caller allows exactly that one (issue 12.2).
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", f"file://{release['kek']}")


@pytest.fixture()
def snapshot(release: dict[str, Any], tmp_path: Path) -> Path:
    cache = build_cache(release["enc"], tmp_path / "hub")
    path = Path(hf.snapshot_download(REPO_ID, cache_dir=cache, local_files_only=True))
    assert path.name == REV and (path / "model.safetensors").is_symlink()
    info = hf.scan_cache_dir(cache)
    assert [r.repo_id for r in info.repos] == [REPO_ID]
    return path


def test_snapshot_loads_and_verifies(snapshot: Path, release: dict[str, Any]) -> None:
    audit, sink = memory_audit()
    got = loader.load_file(snapshot, policy=release["keys"].policy(), audit=audit)
    assert_same(got, release["expected"])
    assert "verify.ok" in events(sink) and "load.ok" in events(sink)


def test_single_file_in_snapshot_loads(release: dict[str, Any], tmp_path: Path) -> None:
    enc1 = tmp_path / "one"
    enc1.mkdir()
    shutil.copyfile(release["enc"] / "model.safetensors", enc1 / "model.safetensors")
    sign(enc1 / "model.safetensors", enc1 / "model.safetensors.sig", release["keys"])
    cache = build_cache(enc1, tmp_path / "hub")
    snap = Path(hf.snapshot_download(REPO_ID, cache_dir=cache, local_files_only=True))
    got = loader.load_file(snap / "model.safetensors", policy=release["keys"].policy())
    assert_same(got, release["expected"])


def test_snapshot_fetches(snapshot: Path, release: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = fetch_model(snapshot, out, policy=release["keys"].policy(), allow_disk=True)
    assert sorted(res.files) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert not (out / "model.safetensors").is_symlink()
    from safetensors.torch import load_file

    assert_same(load_file(str(out / "model.safetensors")), release["expected"])
    assert (out / "sub" / "tokenizer.json").read_text() == '{"v": 1}'


@pytest.mark.parametrize("where", ["outside", "other-repo"])
def test_link_leaving_the_repo_is_refused(
    snapshot: Path, release: dict[str, Any], tmp_path: Path, where: str
) -> None:
    evil = tmp_path / "evil" / "blobs" / "config"
    evil.parent.mkdir(parents=True)
    evil.write_text('{"model_type": "tiny"}')  # the same bytes: only the link is wrong
    if where == "other-repo":
        other = snapshot.parents[2] / "models--org--other" / "blobs"
        other.mkdir(parents=True)
        evil = other / "config"
        evil.write_text('{"model_type": "tiny"}')
    link = snapshot / "config.json"
    link.unlink()
    os.symlink(os.path.relpath(evil, link.parent), link)
    for policy in (release["keys"].policy(), UnsafeNoVerification()):
        audit, sink = memory_audit()
        with pytest.raises(VerificationError, match=r"config\.json is a symbolic link leaving"):
            loader.load_file(snapshot, policy=policy, audit=audit)
        assert "load.denied" in events(sink) and "load.ok" not in events(sink)
    with pytest.raises(VerificationError, match="leaving the Hugging Face cache repository"):
        fetch_model(snapshot, tmp_path / "out", policy=UnsafeNoVerification(), allow_disk=True)
    assert not (tmp_path / "out").exists()


def test_link_to_a_directory_is_refused(snapshot: Path, release: dict[str, Any]) -> None:
    os.symlink(snapshot.parents[1] / "blobs", snapshot / "more")
    with pytest.raises(VerificationError, match="more is a symbolic link to a directory"):
        loader.load_file(snapshot, policy=release["keys"].policy())


def test_tampered_blob_is_an_integrity_error(snapshot: Path, release: dict[str, Any]) -> None:
    blob = Path(os.path.realpath(snapshot / "model.safetensors"))
    data = bytearray(blob.read_bytes())
    data[-100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="chunk"):
        loader.load_file(snapshot, policy=release["keys"].policy())


def test_snapshot_download_local_dir_layout(release: dict[str, Any], tmp_path: Path) -> None:
    """``snapshot_download(local_dir=...)``: real files, and hub bookkeeping under
    ``.cache/huggingface/`` that the signature does not cover and the loader never reads."""
    local = tmp_path / "local"
    shutil.copytree(release["enc"], local)
    meta = local / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "model.safetensors.metadata").write_text(f"{REV}\netag\n1700000000.0\n")
    (local / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    got = loader.load_file(local, policy=release["keys"].policy())
    assert_same(got, release["expected"])
    out = tmp_path / "out"
    res = fetch_model(local, out, policy=release["keys"].policy(), allow_disk=True)
    assert not any(".cache" in f for f in res.files)


def test_verify_accepts_a_snapshot_without_allow_symlinks(
    snapshot: Path, release: dict[str, Any]
) -> None:
    """`weightguard verify` (and verify_bundle) apply the loader's snapshot rule: links into
    the repo's blobs/ are followed and every byte hashed, with no --allow-symlinks."""
    import subprocess
    import sys

    from weightguard.signing import verify_bundle

    audit, sink = memory_audit()
    m = verify_bundle(snapshot, snapshot / "model.sig", release["keys"].policy(), audit=audit)
    assert m.hashed and sorted(m.files) == [
        "config.json",
        "model.safetensors",
        "sub/tokenizer.json",
    ]
    assert "verify.ok" in events(sink)
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": "-"}
    argv = [sys.executable, "-m", "weightguard_cli", "verify", str(snapshot)]
    argv += ["--trust-key", str(release["keys"].public)]

    def cli_verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

    p = cli_verify()
    assert p.returncode == 0, p.stderr
    # a link out of the repo is refused by verify too, audited as a failed verification
    evil = snapshot.parents[2] / "elsewhere.json"
    evil.write_text('{"model_type": "tiny"}')
    link = snapshot / "config.json"
    link.unlink()
    os.symlink(os.path.relpath(evil, link.parent), link)
    audit, sink = memory_audit()
    with pytest.raises(VerificationError, match=r"config\.json is a symbolic link leaving"):
        verify_bundle(snapshot, snapshot / "model.sig", release["keys"].policy(), audit=audit)
    assert events(sink) == ["verify.failed"]
    p = cli_verify()
    assert p.returncode == 1
    assert "config.json is a symbolic link leaving the Hugging Face cache" in p.stderr


def test_cli_unverified_fetch_never_copies_through_a_linked_blobs(
    release: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 22's reproduction: the repo's ``blobs/`` links to ``/`` and ``config.json``
    to a token file through it; ``weightguard fetch --unsafe-no-verification`` copied the
    token into the output as config.json.  Now refused, nothing written, token nowhere."""
    import subprocess
    import sys

    cache = build_cache(release["enc"], tmp_path / "hub")
    snap = Path(hf.snapshot_download(REPO_ID, cache_dir=cache, local_files_only=True))
    token = tmp_path / "var" / "run" / "secrets" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hvs.not-a-real-token")
    repo = snap.parents[1]
    real = tmp_path / "realblobs"
    (repo / "blobs").rename(real)
    os.symlink("/", repo / "blobs")
    for link in [p for p in snap.rglob("*") if p.is_symlink()]:
        depth = len(link.relative_to(snap).parts) + 1
        target = real / os.path.basename(os.readlink(link))
        link.unlink()
        os.symlink("../" * depth + "blobs" + str(target), link)
    (snap / "config.json").unlink()
    os.symlink("../../blobs" + str(token), snap / "config.json")
    (snap / "model.sig").unlink()  # an unsigned model, fetched unverified
    out = tmp_path / "out"
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": "-"}
    argv = [sys.executable, "-m", "weightguard_cli", "fetch", str(snap), "-o", str(out)]
    argv += ["--unsafe-no-verification", "--allow-disk"]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "blobs/ of a Hugging Face cache repository is (or goes through) a symbolic link" in (
        p.stderr
    )
    assert not out.exists()
