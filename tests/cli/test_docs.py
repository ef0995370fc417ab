"""docs/cli.md is generated from the commands; it must match them."""

from __future__ import annotations

from pathlib import Path

from weightguard_cli.docgen import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/cli.md is stale: run `python -m weightguard_cli.docgen > docs/cli.md`"
    )


def test_every_command_documented() -> None:
    text = DOC.read_text()
    for name in ("encrypt", "sign", "verify", "load", "fetch", "audit verify", "watermark check"):
        assert f"## `weightguard {name}`" in text
