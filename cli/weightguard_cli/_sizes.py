"""Sizes on the command line: ``4MiB``, ``64k``, ``65536`` (one parser for every command
that takes a size).  Importing this module is cheap."""

from __future__ import annotations

import re

import click

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """Bytes in ``value`` (binary units: k = KiB, m = MiB, g = GiB); BadParameter if not."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(value)
    if not m:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 4MiB, 65536)")
    n, unit = int(m.group(1)), (m.group(2) or "b").lower()
    return n * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit[0]]
