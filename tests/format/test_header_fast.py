"""The artifact header of an open is read by the C parser when it is canonical
(``_canonical_doc``); every header the bounded reader refuses is still refused, with
the bounded reader's own error, and every header it accepts gives the same fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from weightguard._internal.format import layout as fmt
from weightguard.errors import FormatError
from weightguard.manifest import WrappedKey

TABLE = {
    "__metadata__": {"format": "pt", "n\u00e4me": "\u00fc\u2603"},
    "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "b.weight": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]},
}
MAC = b"\x00" * fmt.MAC_SIZE


def _doc() -> dict[str, Any]:
    header, _ = fmt.new_header(
        data_key=bytearray(32),
        wrapped_key=WrappedKey(
            provider="file", uri="file:///k", key_version=3, context="c", ciphertext="x"
        ),
        content="safetensors",
        st_header=TABLE,
        st_header_size=8 + 200,
        data_size=24,
    )
    doc: dict[str, Any] = json.loads(header.raw)
    return doc


def _bounded_only(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> fmt.ArtifactHeader:
    with monkeypatch.context() as m:
        m.setattr(fmt, "_canonical_doc", lambda raw: None)
        return fmt._header_from_raw(raw, MAC, path="x")


def _outcome(raw: bytes) -> fmt.ArtifactHeader | str:
    try:
        return fmt._header_from_raw(raw, MAC, path="x")
    except FormatError as exc:
        return f"{type(exc).__name__}: {exc}"


def _bounded_outcome(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> fmt.ArtifactHeader | str:
    try:
        return _bounded_only(raw, monkeypatch)
    except FormatError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_a_canonical_header_takes_the_fast_way_with_the_same_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = fmt.canonical_json(_doc())
    assert fmt._canonical_doc(raw) is not None
    fast = fmt._header_from_raw(raw, MAC, path="x")
    slow = _bounded_only(raw, monkeypatch)
    assert fast == slow
    assert fast.validated == slow.validated and fast.core_digest == slow.core_digest
    assert fast.tensors == TABLE


def _with(change: Any) -> bytes:
    doc = _doc()
    change(doc)
    return fmt.canonical_json(doc)


def _shape(value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["tensors"]["z.weight"] = {"dtype": "F32", "shape": [0, value], "data_offsets": [24, 24]}

    return change


def _meta(value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["tensors"]["__metadata__"]["deep"] = value

    return change


def _key_version(value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["wrapped_key"]["key_version"] = value

    return change


REFUSED = {
    # an integer past INT64 where the fields would take it (a zero-sized tensor's shape,
    # the key version): the bounded reader's range check, not the C parser's bignum
    "shape past INT64": (_with(_shape(2**63)), "out of range"),
    "key version past INT64": (_with(_key_version(10**30)), "out of range"),
    "50 digits": (_with(_key_version(10**49)), "digits is out of range"),
    "negative past INT64": (_with(_shape(-(2**63) - 1)), "out of range"),
    # nested deeper than the limit inside a value the fields refuse anyway
    "too deep": (_with(_meta([[[[[["x"]]]]]])), "nested 9 levels deep"),
    # a duplicate key whose last value is the right one (the C parser keeps the last)
    "duplicate key": (
        fmt.canonical_json(_doc()).replace(b'"content":', b'"content":"raw","content":', 1),
        "duplicate JSON key 'content'",
    ),
    "float": (fmt.canonical_json(_doc()).replace(b'"version":1', b'"version":1.0'), "not an"),
    "NaN": (fmt.canonical_json(_doc()).replace(b'"key_version":3', b'"key_version":NaN'), "NaN"),
    "not UTF-8": (fmt.canonical_json(_doc()).replace("\u2603".encode(), b"\xff"), "UTF-8"),
    "not canonical": (json.dumps(_doc()).encode(), "canonical form"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_bounded_reader_refuses_is_refused_with_its_error(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, message = REFUSED[case]
    got = _outcome(raw)
    assert isinstance(got, str) and message in got, got
    assert got == _bounded_outcome(raw, monkeypatch)


ACCEPTED = {
    # 19 digits within INT64: the fast way declines, the bounded reader accepts
    "19-digit key version": _with(_key_version(10**18)),
    "digits in a string": _with(_meta("1" * 40)),
    "zero-sized tensor": _with(_shape(7)),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_what_the_bounded_reader_accepts_gives_the_same_header(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = ACCEPTED[case]
    got = _outcome(raw)
    assert isinstance(got, fmt.ArtifactHeader), got
    assert got == _bounded_only(raw, monkeypatch)
    assert got.validated == _bounded_only(raw, monkeypatch).validated


def test_too_deep_for_the_c_parser_is_not_a_crash() -> None:
    raw = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert fmt._canonical_doc(raw) is None
    with pytest.raises(FormatError, match="nested"):
        fmt._header_from_raw(raw, MAC, path="x")


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_a_version_that_only_equals_1_is_refused(
    version: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JSON true == 1 in Python: the version steers how the rest is read, so its type is
    # checked first, on both ways of reading the header
    doc = _doc()
    doc["version"] = version
    raw = fmt.canonical_json(doc) if version is True else json.dumps(doc).encode()
    why = "format version True is not supported" if version is True else "not an|canonical"
    with pytest.raises(FormatError, match=why):
        fmt._header_from_raw(raw, MAC, path="x")
    with pytest.raises(FormatError, match=why):
        _bounded_only(raw, monkeypatch)
