"""``verify_bundle(..., listing=)``: signature/policy/coverage of a remote (listed) model."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.load import (
    MODEL_LAYOUT,
    other_keys,  # noqa: F401 - fixture
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard.errors import (
    ConfigError,
    CoverageError,
    FormatError,
    IntegrityError,
    PolicyError,
)
from weightguard.signing import verify_bundle


@pytest.fixture
def model_dir(tmp_path: Path, sign_keys) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    d.mkdir()
    write_st(d / "model-1.safetensors", MODEL_LAYOUT, seed=1)
    write_st(d / "model-2.safetensors", MODEL_LAYOUT, seed=2)
    (d / "config.json").write_text("{}")
    sign(d, d / "model.sig", sign_keys, chunk_size=4096)
    return d


def _listing(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in d.iterdir() if p.name != "model.sig"}


def test_listing_matches_local_verification(model_dir, sign_keys) -> None:  # type: ignore[no-untyped-def]
    pol = sign_keys.policy()
    local = verify_bundle(model_dir, model_dir / "model.sig", pol, hash_files=False)
    sig = (model_dir / "model.sig").read_bytes()
    remote = verify_bundle(
        "s3://bucket/m/", sig, pol, hash_files=False, listing=_listing(model_dir)
    )
    assert remote.files == local.files
    assert remote.signer == local.signer and remote.bundle_digest == local.bundle_digest
    # also with the signature as a path
    by_path = verify_bundle(
        "s3://bucket/m/", model_dir / "model.sig", pol, hash_files=False,
        listing=_listing(model_dir),
    )  # fmt: skip
    assert by_path.files == local.files


def test_listing_coverage_and_sizes(model_dir, sign_keys, other_keys) -> None:  # type: ignore[no-untyped-def]
    pol = sign_keys.policy()
    sig = (model_dir / "model.sig").read_bytes()
    good = _listing(model_dir)
    with pytest.raises(CoverageError, match=r"model-3\.safetensors"):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False,
                      listing=good | {"model-3.safetensors": 10})  # fmt: skip
    with pytest.raises(CoverageError, match=r"notes\.txt"):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False, listing=good | {"notes.txt": 1})
    # an unsigned non-weight file may be allowed explicitly
    ok = verify_bundle("s3://b/m/", sig, pol, hash_files=False,
                       listing=good | {"notes.txt": 1}, allow_unsigned=["*.txt"])  # fmt: skip
    assert ok.uncovered == ("notes.txt",)
    missing = {k: v for k, v in good.items() if k != "model-2.safetensors"}
    with pytest.raises(IntegrityError, match="missing"):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False, listing=missing)
    resized = good | {"model-1.safetensors": good["model-1.safetensors"] + 1}
    with pytest.raises(IntegrityError, match="signed size"):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False, listing=resized)
    with pytest.raises(PolicyError):
        verify_bundle("s3://b/m/", sig, other_keys.policy(), hash_files=False, listing=good)


def test_listing_bad_input(model_dir, sign_keys) -> None:  # type: ignore[no-untyped-def]
    pol = sign_keys.policy()
    sig = (model_dir / "model.sig").read_bytes()
    good = _listing(model_dir)
    with pytest.raises(ConfigError, match="hash_files=False"):
        verify_bundle("s3://b/m/", sig, pol, listing=good)
    with pytest.raises(FormatError):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False, listing=good | {"../x": 1})
    with pytest.raises(FormatError, match="byte count"):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False,
                      listing=good | {"config.json": -1})  # fmt: skip
    with pytest.raises(FormatError, match="no other names"):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False, listing=good | {".": 3})
    with pytest.raises(CoverageError, match="signs a directory"):
        verify_bundle("s3://b/m.safetensors", sig, pol, hash_files=False, listing={".": 3})


def test_listing_single_file(tmp_path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "model.safetensors"
    write_st(f, MODEL_LAYOUT)
    sign(f, tmp_path / "model.safetensors.sig", sign_keys, chunk_size=4096)
    sig = (tmp_path / "model.safetensors.sig").read_bytes()
    pol = sign_keys.policy()
    m = verify_bundle("s3://b/model.safetensors", sig, pol, hash_files=False,
                      listing={".": f.stat().st_size})  # fmt: skip
    assert m.files["."].size == f.stat().st_size and m.files["."].chunked
    with pytest.raises(CoverageError, match="signs a single file"):
        verify_bundle("s3://b/m/", sig, pol, hash_files=False,
                      listing={"model.safetensors": f.stat().st_size})  # fmt: skip
