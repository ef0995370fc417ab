"""Containment by real paths: a name inside a model never reaches outside it through a
symbolic link, at any level, verified or not (issue 22: a Hugging Face cache whose
``blobs/`` linked to ``/`` let ``fetch --unsafe-no-verification`` copy a token file
into the output as ``config.json``).

Every case is run against three consumers (a signed load, an unverified load, an
unverified fetch); each must refuse with a typed, audited error, leave nothing behind,
and never put the planted secret in the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.adversarial import Corpus, Tally, expect_refusal, files_under
from weightguard import loader
from weightguard.errors import DestinationError, VerificationError
from weightguard.policy import UnsafeNoVerification
from weightguard.transfer import fetch_model

REV = "0123456789abcdef0123456789abcdef01234567"
SECRET = b"hvs.CAESIJ-not-a-real-vault-token\n"


def _cache(model: Path, root: Path) -> tuple[Path, Path]:
    """The hub-cache layout of ``model`` under ``root``: (repo, snapshot)."""
    repo = root / "hub" / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / REV
    blobs.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    for f in sorted(model.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            blob = blobs / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snap / f.relative_to(model)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    return repo, snap


def _secret(root: Path) -> Path:
    d = root / "run" / "secrets"
    d.mkdir(parents=True)
    (d / "token").write_bytes(SECRET)
    return d / "token"


def _blobs_to_root(repo: Path, snap: Path, root: Path) -> None:
    """blobs/ -> "/": every snapshot link goes through it, config.json to the secret."""
    real = root / "realblobs"
    (repo / "blobs").rename(real)
    os.symlink("/", repo / "blobs")
    for link in [p for p in snap.rglob("*") if p.is_symlink()]:
        target = real / os.path.basename(os.readlink(link))
        link.unlink()
        os.symlink("../" * (len(link.relative_to(snap).parts) + 1) + "blobs" + str(target), link)
    cfg = snap / "config.json"
    cfg.unlink()
    os.symlink("../../blobs" + str(_secret(root)), cfg)


def _blobs_elsewhere(repo: Path, snap: Path, root: Path) -> None:
    """blobs/ -> another directory that also holds the secret under a blob-like name."""
    other = root / "elsewhere"
    (repo / "blobs").rename(other)
    os.symlink(other, repo / "blobs")
    (other / "secret").write_bytes(SECRET)
    cfg = snap / "config.json"
    cfg.unlink()
    os.symlink("../../blobs/secret", cfg)


def _moved(level: Callable[[Path, Path], Path]) -> Callable[[Path, Path, Path], None]:
    """A level of the repo replaced by a link to a real directory elsewhere whose
    ``config.json`` is the secret (a plain file: no snapshot link to check)."""

    def attack(repo: Path, snap: Path, root: Path) -> None:
        src = level(repo, snap)
        dst = root / "outside" / src.name
        dst.parent.mkdir(parents=True)
        shutil.copytree(src, dst, symlinks=False)  # links become real files out there
        shutil.rmtree(src)
        os.symlink(dst, src)
        cfg = (root / "outside" / src.name).joinpath(*snap.relative_to(src).parts, "config.json")
        cfg.write_bytes(SECRET)

    return attack


LEVELS: dict[str, Callable[[Path, Path, Path], None]] = {
    "blobs-to-root": _blobs_to_root,
    "blobs-elsewhere": _blobs_elsewhere,
    "revision-dir": _moved(lambda repo, snap: snap),
    "snapshots-dir": _moved(lambda repo, snap: repo / "snapshots"),
    "repo-dir": _moved(lambda repo, snap: repo),
}


def _consumers(corpus: Corpus, src: Path, out: Path) -> dict[str, Callable[[Any], Any]]:
    return {
        "signed load": lambda audit: loader.load_file(src, policy=corpus.policy, audit=audit),
        "unverified load": lambda audit: loader.load_file(
            src, policy=UnsafeNoVerification(), audit=audit
        ),
        "unverified fetch": lambda audit: fetch_model(
            src, out, policy=UnsafeNoVerification(), allow_disk=True, audit=audit
        ),
    }


def _no_secret(out: Path) -> bool:
    return not out.exists() or all(
        SECRET not in (out / f).read_bytes() for f in files_under(out) if (out / f).is_file()
    )


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_linked_level_of_the_hf_cache_is_refused(corpus: Corpus, work: Path, level: str) -> None:
    repo, snap = _cache(corpus.a, work)
    LEVELS[level](repo, snap, work)
    tally = Tally()
    consumers = _consumers(corpus, snap, work / "out")
    shard = snap / "model-00001-of-00002.safetensors"  # one file of the snapshot, named
    consumers["unverified single file"] = lambda audit: loader.load_file(
        shard, policy=UnsafeNoVerification(), audit=audit
    )
    for name, run in consumers.items():
        exc = expect_refusal(tally, f"{level}/{name}", run)
        assert isinstance(exc, VerificationError), (name, exc)
        assert "symbolic link" in exc.message, exc.message
        assert not (work / "out").exists() and _no_secret(work / "out")
    tally.check()


def test_plain_directory_link_leaving_it_is_refused_unverified(corpus: Corpus, work: Path) -> None:
    """Outside any cache: a side file linked to a secret is refused even without a
    signature (it was copied into the output as config.json)."""
    model = corpus.copy(corpus.a, work / "m")
    (model / "config.json").unlink()
    os.symlink(_secret(work), model / "config.json")
    tally = Tally()
    for name, run in _consumers(corpus, model, work / "out").items():
        exc = expect_refusal(tally, name, run)
        assert isinstance(exc, VerificationError), (name, exc)
        assert not (work / "out").exists()
    # Without a signature to refuse the link, the containment rule does, naming it.
    (model / "model.sig").unlink()
    # (a load reads no side file: only fetch, which copies them, meets the link)
    consumers = _consumers(corpus, model, work / "out")
    for name in ("unverified fetch",):
        run = consumers[name]
        exc = expect_refusal(tally, f"unsigned {name}", run)
        assert isinstance(exc, VerificationError), (name, exc)
        assert "config.json resolves outside the model directory" in exc.message, exc.message
        assert not (work / "out").exists()
    tally.check()


def test_link_inside_the_directory_still_loads_unverified(corpus: Corpus, work: Path) -> None:
    model = corpus.copy(corpus.a, work / "m")
    (model / "config.json").rename(model / "real-config.json")
    os.symlink("real-config.json", model / "config.json")
    (model / "model.sig").unlink()  # a signed directory may hold no links at all
    res = fetch_model(model, work / "out", policy=UnsafeNoVerification(), allow_disk=True)
    assert "config.json" in res.files
    assert (work / "out" / "config.json").read_bytes() == (model / "real-config.json").read_bytes()


def test_fetch_never_writes_through_a_linked_directory_in_the_destination(
    corpus: Corpus, work: Path
) -> None:
    """``replace`` keeps what is in the destination until the end; a directory link left
    there must not carry a model file outside it."""
    from weightguard.signing import sign_model

    model = corpus.copy(corpus.a, work / "m")
    sub = "tokenizer"
    (model / sub).mkdir()
    (model / sub / "tokenizer.json").write_text('{"v": 1}')
    (model / "model.sig").unlink()
    sign_model(model, model / "model.sig", corpus.signer)
    victim = work / "victim"
    victim.mkdir()
    out = work / "out"
    out.mkdir()
    os.symlink(victim, out / sub)
    tally = Tally()
    exc = expect_refusal(
        tally,
        "replace into linked dir",
        lambda audit: fetch_model(
            model, out, policy=corpus.policy, allow_disk=True, replace=True, audit=audit
        ),
        out_dir=out,
    )
    tally.check()
    assert isinstance(exc, DestinationError) and "symbolic link" in exc.message
    assert list(victim.iterdir()) == []


def test_fetch_destination_that_is_a_link_is_refused(corpus: Corpus, work: Path) -> None:
    real = work / "real"
    real.mkdir()
    link = work / "models"
    os.symlink(real, link)
    tally = Tally()
    exc = expect_refusal(
        tally,
        "link dest",
        lambda audit: fetch_model(
            corpus.a, link, policy=corpus.policy, allow_disk=True, audit=audit
        ),
    )
    tally.check()
    assert isinstance(exc, DestinationError) and "is a symbolic link" in exc.message
    assert list(real.iterdir()) == []


def test_kserve_initializer_refuses_a_linked_destination(
    corpus: Corpus, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KServe's /mnt/models as a link (planted in the image, or on a shared volume):
    refused with one error line, and the refusal is in the audit log."""
    from weightguard_cli.storage_initializer import main

    real = work / "real"
    real.mkdir()
    link = work / "mnt-models"
    os.symlink(real, link)
    log = work / "audit.jsonl"
    monkeypatch.setenv("WEIGHTGUARD_AUDIT_LOG", str(log))
    monkeypatch.setenv("WEIGHTGUARD_TRUST_KEYS", str(corpus.root / "release.pub"))
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_DISK", "1")
    assert main([str(corpus.a), str(link)]) == 1
    assert list(real.iterdir()) == []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    denied = [r for r in records if r.get("event") == "fetch" and r.get("outcome") == "denied"]
    assert denied and "symbolic link" in denied[0]["reason"], records


def test_encrypt_refuses_a_side_file_linked_outside(corpus: Corpus, work: Path) -> None:
    """A staging directory with a planted link would put the target into the release."""
    from weightguard import crypt
    from weightguard.errors import SourceError

    plain = work / "plain"
    shutil.copytree(corpus.root / "a-plain", plain)
    (plain / "tokenizer.json").symlink_to(_secret(work))
    with pytest.raises(SourceError, match=r"tokenizer\.json is a symbolic link leading outside"):
        crypt.encrypt_model(plain, work / "enc", corpus.key_uri)
    assert not (work / "enc").exists()


def test_push_refuses_a_file_linked_outside(corpus: Corpus, work: Path) -> None:
    from weightguard.errors import SourceError
    from weightguard.transfer import push_model

    release = corpus.copy(corpus.a, work / "rel")
    (release / "notes.txt").symlink_to(_secret(work))

    class NoClient:  # refused before any request
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"S3 was called ({name})")

    with pytest.raises(SourceError, match=r"notes\.txt is a symbolic link leading outside"):
        push_model(release, "s3://bucket/model/", client=NoClient())
