"""Shared pytest fixtures.  Area-specific fixtures live in tests/fixtures_<area>.py."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.fixtures",
]
