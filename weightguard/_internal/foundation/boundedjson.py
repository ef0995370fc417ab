"""The one JSON reader for untrusted bytes: bounded size, depth and numbers.

Every parser of input weightguard did not write itself in this process (artifact and
safetensors headers, ``index.json``, OMS bundles and statements, audit lines,
anchors, commitments) reads JSON through :func:`loads`, so one set of rules holds:

* at most ``max_bytes`` bytes, at most ``max_depth`` nested arrays/objects -- checked
  *before* the recursive C parser runs, so no input reaches ``RecursionError``;
* integers within ``int_range`` (and at most 40 digits, so no quadratic ``int()``);
* ``NaN``/``Infinity`` refused; floats refused unless ``floats=True``, and then only
  finite ones (``1e400`` would parse to ``inf``);
* duplicate object keys refused (two parsers that keep different duplicates would
  see two different documents behind one signature).

Every refusal is one ``error`` (a :class:`~weightguard.errors.WeightguardError`
subclass, :class:`~weightguard.errors.FormatError` by default) whose message starts
with ``what``, so callers never see ``ValueError``/``RecursionError``/``OverflowError``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from weightguard.errors import FormatError, WeightguardError

__all__ = ["INT64", "MAX_INDEX_BYTES", "UINT64", "depth", "loads", "loads_canonical", "loads_index"]

INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
_MAX_DIGITS = 40

# Bytes the depth scan keeps; everything else is deleted by one C-speed translate.
_KEEP = b'[]{}"'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_STRING = re.compile(rb'"[^"]*+"')
_DELTA = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


class _Refused(ValueError):
    """Raised inside json's hooks; turned into the caller's error type by loads."""


def depth(data: bytes) -> int:
    """The deepest array/object nesting of ``data``, brackets inside strings ignored.

    Exact for well-formed JSON; on malformed input it may over-count, which only ever
    turns one refusal into another.
    """
    # In JSON a backslash always starts an escape, so dropping escaped backslashes and
    # then escaped quotes (left to right, as a parser reads) leaves only real quotes.
    plain = bytes(data).replace(b"\\\\", b"").replace(b'\\"', b"")
    # Strings out, then any unpaired quote (malformed input) out, then +1/-1 as signed
    # bytes; accumulate walks the memoryview in C.
    brackets = _STRING.sub(b"", plain.translate(None, _DROP)).translate(_DELTA, b'"')
    return max(0, max(accumulate(memoryview(brackets).cast("b")), default=0))


def loads(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = 16,
    int_range: tuple[int, int] = INT64,
    floats: bool = False,
    error: type[WeightguardError] = FormatError,
    hint: str | None = None,
) -> Any:
    """Parse untrusted JSON under the limits above; refusals raise ``error``."""

    def refuse(reason: str) -> WeightguardError:
        return error(f"{what}: {reason}", hint=hint)

    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise refuse(f"JSON is {len(raw)} bytes, over the {max_bytes}-byte limit")
    nesting = depth(raw)
    if nesting > max_depth:
        raise refuse(f"JSON nested {nesting} levels deep, over the limit of {max_depth}")
    lo, hi = int_range

    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > _MAX_DIGITS:
            raise _Refused(f"integer with {len(text)} digits is out of range")
        value = int(text)
        if not lo <= value <= hi:
            raise _Refused(f"integer {text[:24]} is out of range [{lo}, {hi}]")
        return value

    def parse_float(text: str) -> float:
        if not floats:
            raise _Refused(f"number {text[:24]} is not an integer")
        value = float(text)
        if not math.isfinite(value):
            raise _Refused(f"number {text[:24]} is out of range")
        return value

    def parse_constant(name: str) -> Any:
        raise _Refused(f"{name} is not JSON")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise _Refused(f"duplicate JSON key {key[:80]!r}")
            out[key] = value
        return out

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=pairs,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=parse_constant,
        )
    except _Refused as exc:
        raise refuse(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise refuse(
            f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError, OverflowError) as exc:  # pragma: no cover - belt, braces
        raise refuse(f"malformed JSON ({type(exc).__name__})") from None


def _no_constant(name: str) -> Any:
    raise _Refused(name)


_PLAIN = json.JSONDecoder(parse_constant=_no_constant)  # json.loads's, NaN refused


def loads_canonical(data: bytes, *, what: str, max_bytes: int, max_depth: int = 16,
                    floats: bool = False, error: type[WeightguardError] = FormatError,
                    hint: str | None = None) -> Any:  # fmt: skip
    """:func:`loads` (INT64 integers) of a JSON object, about twice as fast on the
    compact JSON weightguard writes itself (audit lines: no whitespace, one ``":``
    per key).

    The plain C parser runs without hooks when cheap scans already bound the input:
    fewer brackets than ``max_depth`` (so no deeper nesting), valid UTF-8, within
    ``max_bytes``; it refuses NaN/Infinity.  One walk of the result then checks what
    the hooks would have: integers in INT64, floats finite (and allowed), and no
    duplicate key -- with no whitespace before a colon each key of the input is one
    ``":``, and a key the plain parser dropped leaves one unaccounted (a string
    holding ``":`` or `` :`` also falls back).
    Any doubt or refusal goes to :func:`loads`: the result and every refusal are the
    same as ``loads``'s.
    """
    if (
        isinstance(data, bytes)
        and len(data) <= max_bytes
        and data.count(b"{") + data.count(b"[") <= max_depth
    ):
        try:
            value = _PLAIN.decode(data.decode("utf-8"))
        except (ValueError, RecursionError):
            value = None
        if (
            type(value) is dict
            # no whitespace before a colon: each key of the input ends in '":'
            and not (b" :" in data or b"\t:" in data or b"\n:" in data or b"\r:" in data)
            and _plain(value, floats) == data.count(b'":')
        ):
            return value
    return loads(data, what=what, max_bytes=max_bytes, max_depth=max_depth, floats=floats,
                 error=error, hint=hint)  # fmt: skip


def _plain(value: dict[str, Any] | list[Any], floats: bool) -> int:
    """The object keys in ``value``; -1 if it holds a number :func:`loads` refuses."""
    lo, hi = INT64
    items: Iterable[Any] = value.values() if isinstance(value, dict) else value
    n = len(value) if isinstance(value, dict) else 0
    for x in items:
        t = type(x)
        if t is str or t is bool or x is None:
            continue
        if t is int:
            if not lo <= x <= hi:
                return -1
        elif t is dict or t is list:
            k = _plain(x, floats)
            if k < 0:
                return -1
            n += k
        elif t is float and not (floats and math.isfinite(x)):
            return -1
    return n


MAX_INDEX_BYTES = 64 * 1024 * 1024


def loads_index(data: bytes, *, what: str) -> Any:
    """A ``*.safetensors.index.json``: ``{"metadata": {...}, "weight_map": {name: file}}``.

    Depth 8 leaves room for metadata a tool adds; floats allowed there (finite only).
    """
    return loads(
        data,
        what=what,
        max_bytes=MAX_INDEX_BYTES,
        max_depth=8,
        floats=True,
        hint="the index is corrupt or was not written by a safetensors tool",
    )
