"""Encrypted artifacts against plain safetensors readers (docs/FORMAT.md, Magic).

A reader that takes the first 8 bytes as a little-endian header length must fail fast,
allocating almost nothing: safetensors' own reader, and the header read vLLM does
itself (``struct.unpack("<Q", f.read(8))`` then ``json.loads(f.read(n))``).  Artifacts
written by 0.1.0 (the 8-byte legacy magic) still load.
"""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
import warnings
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from weightguard import crypt, loader
from weightguard._internal.format import layout as fmt
from weightguard.errors import FormatError, TruncatedError
from weightguard.policy import UnsafeNoVerification

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _vllm_style_header(path: Path) -> dict[str, object]:
    """vLLM's own safetensors header read (weight_utils), verbatim in shape."""
    with open(path, "rb") as f:
        header_size = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(header_size))  # type: ignore[no-any-return]


@pytest.fixture()
def artifact(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(src))
    key = tmp_path / "k.key"
    crypt.create_key_file(key)
    out = tmp_path / "enc" / "model.safetensors"
    out.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_file(src, out, data_key=f"file://{key}")
    return out, key


def test_new_artifacts_start_with_small_length_then_non_json(artifact: tuple[Path, Path]) -> None:
    data = artifact[0].read_bytes()
    assert data[:16] == fmt.MAGIC
    assert struct.unpack("<Q", data[:8])[0] == 8
    assert data[8:9] != b"{"
    with pytest.raises(UnicodeDecodeError):
        data[8:16].decode("utf-8")


def test_vllm_style_reader_fails_fast_allocating_almost_nothing(
    artifact: tuple[Path, Path],
) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as ei:  # JSONDecodeError / UnicodeDecodeError
            _vllm_style_header(artifact[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(ei.value, UnicodeDecodeError | json.JSONDecodeError)
    assert peak < 64 * 1024, peak
    # the legacy magic is what made vLLM raise MemoryError: a ~7.4e17-byte "header"
    legacy = (VECTORS / "one-byte-past.wgenc").read_bytes()
    assert struct.unpack("<Q", legacy[:8])[0] > 7 * 10**17


@pytest.mark.parametrize("how", ["safe_open", "load_file", "load"])
def test_safetensors_reader_rejects_artifact_cleanly(artifact: tuple[Path, Path], how: str) -> None:
    path = artifact[0]
    with pytest.raises(safetensors.SafetensorError, match="header"):
        if how == "safe_open":
            with safetensors.safe_open(str(path), framework="pt") as f:
                f.keys()
        elif how == "load_file":
            safetensors.torch.load_file(str(path))
        else:
            safetensors.torch.load(path.read_bytes())


def test_every_vector_with_the_new_magic_is_rejected_by_plain_readers() -> None:
    for case in json.loads((VECTORS / "vectors.json").read_text())["cases"]:
        if not case["name"].endswith("-m16"):
            continue
        path = VECTORS / case["output"]
        with pytest.raises(safetensors.SafetensorError):
            safetensors.torch.load_file(str(path))
        with pytest.raises(ValueError):
            _vllm_style_header(path)


@pytest.mark.parametrize("cut", [1, 8, 9, 15])
def test_file_ending_inside_either_magic_is_truncated(tmp_path: Path, cut: int) -> None:
    p = tmp_path / "cut"
    p.write_bytes(fmt.MAGIC[:cut])
    with open(p, "rb") as f, pytest.raises(TruncatedError, match="inside the artifact magic"):
        fmt.read_header(f, path=str(p))


def test_small_length_prefix_without_magic_tail_is_not_an_artifact(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(fmt.MAGIC[:8] + b"notmagic" + b"\0" * 64)
    assert not fmt.is_artifact(p.read_bytes())
    with open(p, "rb") as f, pytest.raises(FormatError, match="bad magic bytes"):
        fmt.read_header(f, path=str(p))


def test_legacy_artifact_loads_and_rewrap_moves_it_to_the_new_magic(tmp_path: Path) -> None:
    doc = json.loads((VECTORS / "vectors.json").read_text())
    key = tmp_path / "vectors.key"
    key.write_bytes(bytes.fromhex(doc["key_file_kek"]))
    legacy = tmp_path / "model.safetensors"
    shutil.copyfile(VECTORS / "one-byte-past.wgenc", legacy)
    plain = safetensors.torch.load_file(str(VECTORS / "one-byte-past.safetensors"))
    assert legacy.read_bytes()[:8] == fmt.LEGACY_MAGIC
    got = loader.load_file(legacy, policy=UnsafeNoVerification(), data_key=f"file://{key}")
    assert set(got) == set(plain)
    assert all(torch.equal(got[k], plain[k]) for k in plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.rewrap(legacy, data_key=f"file://{key}", new_data_key=f"file://{key}")
    assert legacy.read_bytes()[:16] == fmt.MAGIC
    again = loader.load_file(legacy, policy=UnsafeNoVerification(), data_key=f"file://{key}")
    assert all(torch.equal(again[k], plain[k]) for k in plain)
