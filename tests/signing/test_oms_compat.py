"""Older and other OMS shapes, one rule each: shards, blake2, rawBytes/keyDetails keys,
git paths, ':' in names, intermediate CAs as trust anchors (issue 21).

The interop matrix (test_interop_matrix.py) compares whole verdicts with
model_signing; these tests pin the messages and the digests handed to the loader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.signing import make_model, model_signing, write_key
from tests.vectors.oms import restore_untracked
from weightguard._internal.signing import oms
from weightguard.errors import CoverageError, FormatError, IntegrityError, PolicyError
from weightguard.policy import ChainRoot, PublicKey
from weightguard.signing import KeySigner, sign_model, verify_bundle

OMS = Path(__file__).resolve().parents[1] / "vectors" / "oms"
KEY = OMS / "keys" / "key-pub.pem"


def _copy(case: str, tmp: Path) -> tuple[Path, Path]:
    src = OMS / case
    shutil.copytree(src / "model", tmp / "model")
    shutil.copy2(src / "model.sig", tmp / "model.sig")
    restore_untracked(src, tmp / "model")
    return tmp / "model", tmp / "model.sig"


# ----------------------------------------------------------------------------- shards


def _shard_statement(resources: list[tuple[str, bytes]], shard_size: Any = 1000.0) -> bytes:
    subject = oms.subject_digest([d for _, d in resources]).hex()
    return json.dumps(
        {
            "_type": oms.STATEMENT_TYPE,
            "subject": [{"name": "m", "digest": {"sha256": subject}}],
            "predicateType": oms.PREDICATE_TYPE,
            "predicate": {
                "serialization": {
                    "method": "shards",
                    "hash_type": "sha256",
                    "shard_size": shard_size,
                    "allow_symlinks": False,
                },
                "resources": [
                    {"name": n, "algorithm": "sha256-sharded-1000", "digest": d.hex()}
                    for n, d in resources
                ],
            },
        }
    ).encode()


D = hashlib.sha256(b"x").digest()


def test_shards_tile_the_file() -> None:
    st = oms.parse_statement(
        _shard_statement([("a:0:1000", D), ("a:1000:2000", D), ("a:2000:2500", D)])
    )
    assert st.method == "shards" and st.resources == {"a": b""}
    rec = st.shards["a"]
    assert (rec.size, rec.shard_size, len(rec.digests)) == (2500, 1000, 3)


@pytest.mark.parametrize(
    ("names", "msg"),
    [
        (["a:0:1000", "a:1500:2500"], r"shard 1 is \[1500, 2500\), expected \[1000, 2000\)"),
        (["a:0:1000", "a:500:1500"], r"do not tile the file: shard 1 is \[500, 1500\)"),
        (["a:0:999", "a:999:1000"], r"shard 0 is \[0, 999\), expected \[0, 1000\)"),
        (["a:1000:1500"], r"shard 0 is \[1000, 1500\)"),
        (["a:0:1000", "a:0:1000"], r"listed twice"),
        (["a:0:1000", "a:1000:2000", "a:2000:2000"], r"empty or inverted range"),
    ],
)
def test_shards_with_gaps_or_overlaps_are_refused(names: list[str], msg: str) -> None:
    with pytest.raises(FormatError, match=msg):
        oms.parse_statement(_shard_statement([(n, D) for n in names]))


@pytest.mark.parametrize(
    ("name", "msg"),
    [
        ("a:b:0:1000", "not <path>:<start>:<end>"),
        ("a:0", "not <path>:<start>:<end>"),
        ("a:+0:1000", "not a decimal"),
        ("a:00:1000", "not a decimal"),
        ("a: 0:1000", "not a decimal"),
        ("a:0:1_000", "not a decimal"),
        ("../a:0:1000", r"'\.\.' component"),
        (":0:1000", "non-empty"),
    ],
)
def test_shard_names_are_parsed_strictly(name: str, msg: str) -> None:
    with pytest.raises(FormatError, match=msg):
        oms.parse_shard_name(name, "r")


def test_shard_size_must_be_a_whole_number() -> None:
    with pytest.raises(FormatError, match=r"shard_size: expected an integer"):
        oms.parse_statement(_shard_statement([("a:0:1000", D)], shard_size=1000.5))


def test_shard_digests_for_the_loader(tmp_path: Path) -> None:
    """The H2 contract: head == stride == shard_size, plain blake2b of each range."""
    model, sig = _copy("ms-1.1.1/key-shards-blake2", tmp_path)
    m = verify_bundle(model, sig, PublicKey.from_file(KEY), hash_files=False)
    f = m.files["model.safetensors"]
    data = (model / "model.safetensors").read_bytes()
    assert (f.chunked, f.resource_algorithm, f.resource_digest) == (False, "blake2b", b"")
    assert f.size == len(data) and f.head == f.stride == 1000 and len(f.digests) == 3
    for k, d in enumerate(f.digests):
        off, n = f.range(k)
        assert d == hashlib.blake2b(data[off : off + n]).digest()
    whole = m.files["config.json"]  # smaller than a shard: one digest of the whole file
    assert whole.head == 1000 and whole.size < 1000 and len(whole.digests) == 1


def test_files_digests_for_the_loader(tmp_path: Path) -> None:
    model, sig = _copy("ms-1.0.1/key-files-blake2", tmp_path)
    m = verify_bundle(model, sig, PublicKey.from_file(KEY), hash_files=False)
    f = m.files["model.safetensors"]
    data = (model / "model.safetensors").read_bytes()
    assert f.head == f.size == len(data) and f.digests == (f.resource_digest,)
    assert f.resource_digest == hashlib.blake2b(data).digest() and not f.chunked


def test_modified_shard_is_named(tmp_path: Path) -> None:
    model, sig = _copy("ms-0.3.1/key-shards-sha256", tmp_path)
    p = model / "model.safetensors"
    b = bytearray(p.read_bytes())
    b[1500] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(IntegrityError, match=r"signed sha256 digest of shard \[1000, 2000\)"):
        verify_bundle(model, sig, PublicKey.from_file(KEY))


def test_empty_file_beside_a_shards_signature(tmp_path: Path) -> None:
    """A shards signature cannot list an empty file (no shard): present, it is allowed
    unsigned as model_signing allows it; an empty weight file is not."""
    model, sig = _copy("ms-1.1.1/key-shards-sha256", tmp_path)
    m = verify_bundle(model, sig, PublicKey.from_file(KEY))
    assert "empty.txt" in m.uncovered
    (model / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CoverageError, match=r"weight files not covered .*empty\.safetensors"):
        verify_bundle(model, sig, PublicKey.from_file(KEY))


# ------------------------------------------------------------------ older key bundles


def _edit_public_key(sig: Path, **fields: Any) -> None:
    doc = json.loads(sig.read_text())
    doc["verificationMaterial"]["publicKey"].update(fields)
    sig.write_text(json.dumps(doc))


def test_old_key_bundle_keydetails_must_fit_the_key(tmp_path: Path) -> None:
    model, sig = _copy("ms-1.0.1/key-files-sha256", tmp_path)
    assert verify_bundle(model, sig, PublicKey.from_file(KEY)).hashed
    _edit_public_key(sig, keyDetails="PKIX_ECDSA_P256_SHA_256")  # the key is P-384
    with pytest.raises(PolicyError, match=r"keyDetails is 'PKIX_ECDSA_P256_SHA_256', but key"):
        verify_bundle(model, sig, PublicKey.from_file(KEY))
    _edit_public_key(sig, keyDetails="PKIX_ED25519")
    with pytest.raises(FormatError, match=r"keyDetails is 'PKIX_ED25519'; expected one of"):
        verify_bundle(model, sig, PublicKey.from_file(KEY))


def test_old_key_bundle_rawbytes_must_be_the_verifying_key(tmp_path: Path) -> None:
    model, sig = _copy("ms-0.3.1/key-files-sha256", tmp_path)
    write_key(tmp_path, "other", "p384")
    other = base64.b64encode((tmp_path / "other.pub").read_bytes()).decode()
    _edit_public_key(sig, rawBytes=other)
    with pytest.raises(PolicyError, match=r"was signed with another key"):
        verify_bundle(model, sig, PublicKey.from_file(KEY))


# ------------------------------------------------------------------ listing rules


def test_git_paths_signed_are_checked_and_unsigned_ones_are_extra(tmp_path: Path) -> None:
    model, sig = _copy("ms-1.1.1/key-git-paths", tmp_path)
    m = verify_bundle(model, sig, PublicKey.from_file(KEY))
    assert {".git/HEAD", ".gitattributes"} <= set(m.files)
    (model / ".git" / "HEAD").write_text("ref: refs/heads/evil\n")
    with pytest.raises(IntegrityError, match=r"\.git/HEAD"):
        verify_bundle(model, sig, PublicKey.from_file(KEY))
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (model / ".git" / "config").write_text("[core]\n")
    with pytest.raises(CoverageError, match=r"files not covered .*: \.git/config"):
        verify_bundle(model, sig, PublicKey.from_file(KEY))


def test_git_paths_not_signed_are_not_looked_at(tmp_path: Path) -> None:
    model, sig = _copy("ms-1.1.1/key-files-sha256", tmp_path)
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert verify_bundle(model, sig, PublicKey.from_file(KEY)).hashed


def test_colon_in_a_name_signed_by_weightguard_verifies_with_model_signing(
    tmp_path: Path,
) -> None:
    model = make_model(tmp_path / "m")
    (model / "a:b.txt").write_text("colon\n")
    write_key(tmp_path, "k")
    sign_model(model, tmp_path / "m.sig", KeySigner.from_file(tmp_path / "k.pem"))
    m = verify_bundle(model, tmp_path / "m.sig", PublicKey.from_file(tmp_path / "k.pub"))
    assert "a:b.txt" in m.files
    r = model_signing(
        "verify", "key", str(model), "--signature", str(tmp_path / "m.sig"),
        "--public_key", str(tmp_path / "k.pub"),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------ trust anchors


def test_intermediate_as_trust_chain_only_when_allowed(tmp_path: Path) -> None:
    model, sig = _copy("ms-1.1.1/cert-files-sha256", tmp_path)
    inter = OMS / "keys" / "int-cert.pem"
    with pytest.raises(PolicyError, match=r"no self-signed root, only intermediate CA"):
        verify_bundle(model, sig, ChainRoot(inter))
    assert verify_bundle(model, sig, ChainRoot(inter, allow_intermediate_anchor=True)).hashed
    # root and intermediate in one file: the root is the anchor, the intermediate helps
    both = tmp_path / "both.pem"
    both.write_bytes(inter.read_bytes() + (OMS / "keys" / "root-cert.pem").read_bytes())
    m = verify_bundle(model, sig, ChainRoot(both))
    assert "wg-interop-leaf" in m.signer


def test_cli_trust_intermediate(tmp_path: Path) -> None:
    model, sig = _copy("ms-1.1.1/cert-files-sha256", tmp_path)
    inter = str(OMS / "keys" / "int-cert.pem")
    cmd = [sys.executable, "-m", "weightguard_cli", "verify", str(model), "--signature", str(sig)]
    r = subprocess.run([*cmd, "--trust-chain", inter], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "--trust-intermediate" in r.stdout + r.stderr
    r = subprocess.run(
        [*cmd, "--trust-chain", inter, "--trust-intermediate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
