"""Progress reaches its total: the bytes ``encrypt``/``decrypt`` report as done add up
to the total the CLI's bar is given (the size of what it reads).

``encrypt``'s bar stopped at 90.9 of 91.3 MB on MiniLM: the safetensors headers and the
copied files (config, tokenizer) were never reported.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.support.format import build_safetensors
from weightguard import crypt


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)


def _tree_size(path: Path) -> int:  # what the CLI gives the bar (cmd_crypt._tree_size)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _model(tmp_path: Path) -> tuple[Path, str]:
    key = f"file://{crypt.create_key_file(tmp_path / 'dev.key')}"
    src = tmp_path / "plain"
    (src / "sub").mkdir(parents=True)
    for i in range(2):
        data = os.urandom(70_000 + i)
        (src / f"model-{i}.safetensors").write_bytes(
            build_safetensors({f"w{i}": ("U8", [len(data)], data)}, {"format": "pt"})
        )
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "sub" / "tokenizer.json").write_bytes(os.urandom(5000))
    return src, key


def test_encrypt_reports_every_byte_of_its_total(tmp_path: Path) -> None:
    src, key = _model(tmp_path)
    done: list[int] = []
    crypt.encrypt_model(src, tmp_path / "enc", key, chunk_size=16384, progress=done.append)
    assert sum(done) == _tree_size(src)
    one: list[int] = []
    crypt.encrypt_file(src / "model-0.safetensors", tmp_path / "one.enc", key,
                       chunk_size=16384, progress=one.append)  # fmt: skip
    assert sum(one) == _tree_size(src / "model-0.safetensors")


def test_decrypt_reports_every_byte_of_its_total(tmp_path: Path) -> None:
    src, key = _model(tmp_path)
    crypt.encrypt_model(src, tmp_path / "enc", key, chunk_size=16384)
    done: list[int] = []
    crypt.decrypt_model(tmp_path / "enc", tmp_path / "dec", allow_key=[key], progress=done.append)
    assert sum(done) == _tree_size(tmp_path / "enc")
