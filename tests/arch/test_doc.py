"""docs/ARCHITECTURE.md's module map is generated from the code and kept current."""

from __future__ import annotations

from tests.support.architecture import DOC, updated


def test_module_map_is_current() -> None:
    text = DOC.read_text()
    assert updated(text) == text, "run: python -m tests.support.architecture"
