"""Messages about a remote model name it as given: ``s3://bucket/m``, never ``s3:/bucket/m``.

A signature fetched from S3 reaches verification as bytes, with the model's URI as its
display name; a ``Path()`` around that URI once folded ``//`` (a wrong-signer error said
``s3:/models/...:signature``).
"""
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
from weightguard.errors import CoverageError, PolicyError
from weightguard.verifying import verify_bundle


@pytest.fixture
def model_dir(tmp_path: Path, sign_keys) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    d.mkdir()
    write_st(d / "model-1.safetensors", MODEL_LAYOUT, seed=1)
    (d / "config.json").write_text("{}")
    sign(d, d / "model.sig", sign_keys, chunk_size=4096)
    return d


def _listing(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in d.iterdir() if p.name != "model.sig"}


def test_wrong_signer_of_an_s3_model_names_its_uri(model_dir, other_keys) -> None:  # type: ignore[no-untyped-def]
    sig = (model_dir / "model.sig").read_bytes()
    with pytest.raises(PolicyError) as err:
        verify_bundle(
            "s3://models/m", sig, other_keys.policy(), hash_files=False,
            listing=_listing(model_dir),
        )  # fmt: skip
    assert str(err.value).startswith(
        "signature s3://models/m:signature does not satisfy the policy: "
        "s3://models/m:signature was signed with another key"
    ), str(err.value)
    assert "s3:/models" not in str(err.value)


def test_coverage_error_of_an_s3_model_names_its_uri(model_dir, sign_keys) -> None:  # type: ignore[no-untyped-def]
    sig = (model_dir / "model.sig").read_bytes()
    with pytest.raises(CoverageError) as err:
        verify_bundle(
            "s3://models/m", sig, sign_keys.policy(), hash_files=False,
            listing={".": 10},  # a single file where a directory was signed
        )  # fmt: skip
    assert "s3://models/m" in str(err.value) and "s3:/models" not in str(err.value), str(err.value)
