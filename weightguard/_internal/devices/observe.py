"""Test instrumentation of the device seam (not API): see what the copier staged,
inject a failure before a record.

``with observing(before_record=f, on_copier=g): load_file(...)`` -- ``f(file, chunk)``
runs in a worker before each record (raise to inject a failure, e.g.
KeyboardInterrupt); ``g(copier)`` sees each copier after it was closed (its staging
memory must then be zero).  Process-wide while the block runs (workers are other
threads), so tests using it must not run loads concurrently with other tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

__all__ = ["Observer", "current", "observing"]


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Observer(NamedTuple):
    before_record: Callable[[str, int], None] | None = None
    on_copier: Callable[[Any], None] | None = None


_NONE = Observer()
_current: list[Observer] = []


def current() -> Observer:
    return _current[-1] if _current else _NONE


@contextlib.contextmanager
def observing(
    *,
    before_record: Callable[[str, int], None] | None = None,
    on_copier: Callable[[Any], None] | None = None,
) -> Iterator[Observer]:
    obs = Observer(before_record, on_copier)
    _current.append(obs)
    try:
        yield obs
    finally:
        _current.remove(obs)
