"""Session corpus for the adversarial suite (keys, two signed models, one audit log)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.adversarial import Corpus, build

# Seeded so a failure reproduces; WEIGHTGUARD_ADV_SEED explores other corners.
SEED = int(os.environ.get("WEIGHTGUARD_ADV_SEED", "12"))
# Cases per class scale together (CI default 1; `make fuzz` raises it).
SCALE = float(os.environ.get("WEIGHTGUARD_ADV_SCALE", "1"))


def n_cases(base: int) -> int:
    return max(1, int(base * SCALE))


def _scratch(prefix: str) -> Path:
    # Thousands of tiny copies and fsyncs: on tmpfs when there is one, so the suite
    # measures weightguard, not the disk.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@pytest.fixture(scope="session")
def corpus() -> Iterator[Corpus]:
    root = _scratch("wg-adv-corpus-")
    try:
        yield build(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def work() -> Iterator[Path]:
    d = _scratch("wg-adv-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _allow_corpus_key(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    # The artifacts name the corpus's dev key file; the caller allows exactly that one
    # (issue 12 item 2: a key file is used only when the caller names it).
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", corpus.key_uri)
