"""The open parses an artifact's header table once: the canonical form and the core
digest come from one encoding, and the decrypted original header is compared with the
validated clear table by the C parser, refusing what the bounded reader refuses."""

from __future__ import annotations

import json

import pytest

from weightguard._internal.format.layout import (
    _canonical_and_core,
    _core_digest,
    _same_table,
    canonical_json,
)

TABLE = {
    "__metadata__": {"format": "pt", "n\u00e4me": "\u00fc\u2603"},
    "b.weight": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]},
    "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
}


@pytest.mark.parametrize("wrapped", [True, False])
def test_canonical_and_core_digest_are_the_separate_encodings(wrapped: bool) -> None:
    doc = {"version": 1, "tensors": TABLE, "salt": "00ff", "\u00e9": [1, {"z": 0, "a": None}]}
    if wrapped:
        doc["wrapped_key"] = {"provider": "file", "uri": "file:///k", "ciphertext": "ab"}
    assert _canonical_and_core(doc) == (canonical_json(doc), _core_digest(doc))


def test_a_lone_surrogate_still_fails_to_encode() -> None:
    with pytest.raises(UnicodeEncodeError):
        _canonical_and_core({"tensors": {"\ud800": 1}})


def _raw(text: str) -> bytes:
    return text.encode("utf-8")


def test_the_same_table_in_any_key_order_and_padding() -> None:
    raw = json.dumps(dict(reversed(TABLE.items())), ensure_ascii=True).encode() + b"   "
    assert _same_table(raw, TABLE) == TABLE


@pytest.mark.parametrize(
    "raw",
    [
        # floats compare equal to ints (1.0 == 1): refused, as the bounded reader does
        _raw(json.dumps(TABLE).replace("[4]", "[4.0]")),
        # a duplicate key whose last value is the table's: refused
        _raw(json.dumps(TABLE)[:-1] + ', "a.weight": ' + json.dumps(TABLE["a.weight"]) + "}"),
        _raw(json.dumps(TABLE).replace("[4]", "[NaN]")),
        _raw(json.dumps(TABLE).replace('"F16"', '"F32"')),  # a different table
        json.dumps(TABLE).encode("utf-16"),  # not UTF-8 (json.loads(bytes) would take it)
        b"[" * 100_000 + b"]" * 100_000,  # too deep for the C parser: not a crash
        b"[]",
        b"",
    ],
)
def test_anything_else_goes_to_the_bounded_reader(raw: bytes) -> None:
    assert _same_table(raw, TABLE) is None


BOOL_TABLE = {"w": {"dtype": "U8", "shape": [1, 1], "data_offsets": [0, 1]}}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"w": {"dtype": "U8", "shape": [true, 1], "data_offsets": [0, 1]}}',
        b'{"w": {"dtype": "U8", "shape": [1, 1], "data_offsets": [false, true]}}',
    ],
)
def test_a_boolean_is_not_the_tables_integer(raw: bytes) -> None:
    """true == 1 in Python: a decrypted header with booleans where the validated table
    has 0 and 1 is not the table (red team: decrypt would write a header safetensors
    refuses); the same comparison serves the fallback path (same_table)."""
    from weightguard._internal.format.layout import same_table

    assert _same_table(raw, BOOL_TABLE) is None
    assert not same_table(json.loads(raw), BOOL_TABLE, raw)
    ok = json.dumps(BOOL_TABLE).encode()
    assert _same_table(ok, BOOL_TABLE) == BOOL_TABLE
    named = {"is_true": BOOL_TABLE["w"]}  # the literal inside a name: still the table
    assert _same_table(json.dumps(named).encode(), named) == named


TRICKY = {
    "__metadata__": {"q": 'a":b', "c": ":", "s": " : x", "b": "\\\\", "e": '\\":'},
    'we"ird:': {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    "x\\": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},
}


@pytest.mark.parametrize("spaces", [False, True])
def test_the_table_is_recognised_with_colons_quotes_and_backslashes_in_strings(
    spaces: bool,
) -> None:
    """Duplicate keys are ruled out by counting ":" (no per-object hook) only when the
    count is exact; strings holding colons (and quotes, backslashes) send the header to
    the hook, and the table is still recognised."""
    seps = (", ", " : ") if spaces else (",", ":")
    raw = json.dumps(TRICKY, separators=seps).encode()
    assert raw.count(b":") > len(TRICKY) + sum(len(v) for v in TRICKY.values())
    assert _same_table(raw, TRICKY) == TRICKY
    plain = json.dumps(TABLE, separators=seps, ensure_ascii=False).encode()
    assert plain.count(b":") == len(TABLE) + sum(len(v) for v in TABLE.values())
    assert _same_table(plain, TABLE) == TABLE


@pytest.mark.parametrize(
    "dup",
    [
        b', "b.weight" : {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}',
        b',"b.weight":{"dtype":"F16","dtype":"F16","shape":[4],"data_offsets":[16,24]}}',
    ],
)
def test_a_duplicate_key_is_refused_with_any_spacing(dup: bytes) -> None:
    raw = json.dumps(TABLE, ensure_ascii=False).encode()[:-1] + dup
    assert json.loads(raw) == TABLE  # the last value is the table's
    assert _same_table(raw, TABLE) is None
