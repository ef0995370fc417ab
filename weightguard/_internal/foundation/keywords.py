"""Renamed keyword arguments: the old spelling keeps working for one release.

    @renamed_keywords(key_uri="data_key")
    def encrypt_model(src, dst, data_key, *, ...): ...

``encrypt_model(..., key_uri=...)`` still works, with a :class:`FutureWarning` naming
the new keyword; giving both is a TypeError.  The signature (``inspect.signature``,
help, IDEs) shows only the new names.  Every rename is listed in
:data:`weightguard.vocabulary.RENAMED_KEYWORDS` (docs/cli.md, "Renamed Python
keywords").  Importing this module is cheap.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

__all__ = ["renamed_keywords", "take_renamed"]

P = ParamSpec("P")
R = TypeVar("R")


def take_renamed(
    kwargs: dict[str, Any], old_to_new: Mapping[str, str], name: str, *, stacklevel: int = 3
) -> None:
    """Move each old keyword of ``kwargs`` (a caller's keyword arguments, in place) to its
    new name, with a FutureWarning; both given is a TypeError.  For functions that take
    the loader's keywords through ``**options``.  ``stacklevel``: as ``warnings.warn``'s,
    counted from this function (3: the caller of its caller)."""
    for old in [o for o in old_to_new if o in kwargs]:
        new = old_to_new[old]
        if new in kwargs:
            raise TypeError(f"{name}() got {old}= and {new}=: the same argument; give {new}= once")
        warnings.warn(
            f"{name}({old}=...) is deprecated: use {new}= (the old keyword is accepted "
            "until the next release)",
            FutureWarning,
            stacklevel=stacklevel,
        )
        kwargs[new] = kwargs.pop(old)


def renamed_keywords(**old_to_new: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Accept each ``old=`` keyword as its ``new`` name, with a FutureWarning."""
    olds = frozenset(old_to_new)

    def deco(f: Callable[P, R]) -> Callable[P, R]:
        name = getattr(f, "__qualname__", repr(f))
        take = take_renamed

        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not olds.isdisjoint(kwargs):
                take(kwargs, old_to_new, name, stacklevel=3)
            return f(*args, **kwargs)

        # The wrapper runs in the wrapped function's module (its globals): a call of
        # load_file is one step in weightguard.loader, not a detour through this module
        # (tests/arch/test_walk.py).  It reads only its closure.
        home = getattr(f, "__globals__", None)
        if home is not None:
            wrapper = types.FunctionType(
                wrapper.__code__, home, wrapper.__name__, None, wrapper.__closure__
            )
        functools.update_wrapper(wrapper, f)
        wrapper.__renamed_keywords__ = dict(old_to_new)  # type: ignore[attr-defined]
        return wrapper

    return deco
