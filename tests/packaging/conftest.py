"""The wheel of this checkout, built once per session for the packaging tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.venvs import build_wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))
