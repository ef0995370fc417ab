"""The signed time (``signed_at``) parser accepts exactly what
``datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ")`` accepts (it replaced it: strptime's first
call costs about a millisecond of every fresh process's first open)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from weightguard._internal.signing.oms import _parse_time
from weightguard.errors import FormatError

CASES = [
    "2026-12-05T18:58:37Z",
    "2024-02-29T23:59:59Z",  # leap day
    "2023-02-29T00:00:00Z",  # not a leap year
    "2026-1-5T1:2:3Z",  # strptime takes one-digit fields
    "2026-01- 5T00:00:00Z",  # and a space-padded day
    "2026-01-05t00:00:00z",  # case-insensitively
    "2026-13-01T00:00:00Z",
    "2026-00-10T00:00:00Z",
    "2026-04-31T00:00:00Z",
    "2026-01-32T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T23:60:00Z",
    "2026-01-01T23:59:60Z",  # a leap second
    "2026-01-01T23:59:61Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "20261-01-01T00:00:00Z",
    "226-01-01T00:00:00Z",
    "\u0662\u0660\u0662\u0666-01-05T00:00:00Z",  # Arabic-Indic digits: \d and int() take them
    "2026-01-05T00:00:00",
    "2026-01-05T00:00:00ZZ",
    "2026-01-05T00:00:00Z ",
    " 2026-01-05T00:00:00Z",
    "2026-01-05 00:00:00Z",
    "2026-01-05T00:00:00.5Z",
    "2026-01-05T00:00:00+00:00",
    "2026-01-05T00:00Z",
    "2026-01-05",
    "",
    "2026-001-05T00:00:00Z",
    "2026-01-05T000:00:00Z",
    "2026-01-05T00:00:00\u017a",
    "2026-02-30T00:00:00Z",
    "2026-01-01T99:99:99Z",
    "2026-01-01T00:00:0\u00b2Z",  # a superscript two: isdigit(), not a decimal digit
    "2026-01-01T00:00:0\u0662Z",  # an Arabic-Indic two: a decimal digit (regex path)
    "2026-01-01T00:00:+1Z",
    "2026-01-01T00:00: 1Z",
]


def _strptime(s: str) -> datetime | None:
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _ours(s: str) -> datetime | None:
    try:
        return _parse_time(s, "signed_at")
    except FormatError as exc:
        assert "expected UTC time as YYYY-MM-DDTHH:MM:SSZ" in str(exc)
        return None


@pytest.mark.parametrize("s", CASES)
def test_same_verdict_and_value_as_strptime(s: str) -> None:
    assert _ours(s) == _strptime(s)


def test_both_paths_are_exercised() -> None:
    from weightguard._internal.signing import oms

    oms._TIME_RE = None
    _parse_time("2026-12-05T18:58:37Z", "signed_at")  # the signers' form: no pattern
    assert oms._TIME_RE is None
    _parse_time("2026-12-5T18:58:37Z", "signed_at")
    assert oms._TIME_RE is not None


def test_a_refusal_is_a_format_error_naming_the_field() -> None:
    with pytest.raises(FormatError, match=r"^payload\.signed_at: expected UTC time as"):
        _parse_time("2026-01-05T00:00:00+00:00", "payload.signed_at")
    with pytest.raises(FormatError, match=r"payload\.signed_at"):
        _parse_time(20260105, "payload.signed_at")


def test_the_lenient_forms_strptime_took_are_still_taken() -> None:
    want = datetime(2026, 1, 5, 1, 2, 3, tzinfo=UTC)
    for s in ("2026-1-5T1:2:3Z", "2026-01- 5T01:02:03Z", "2026-01-05t01:02:03z"):
        assert _parse_time(s, "signed_at") == want
