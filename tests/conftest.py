"""Shared pytest fixtures.  Fixtures and helpers live in tests/support/."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.fixtures",
]
