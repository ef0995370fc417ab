"""Informed mode: the alignment never receives the key (the p-value bound depends on it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.support import watermark as sup
from weightguard import watermark as wm
from weightguard._internal.watermark import align as wm_align
from weightguard._internal.watermark import detect as wm_detect
from weightguard._internal.watermark import io as wm_io
from weightguard._internal.watermark.keys import WatermarkKey

# Statistical runs (minutes on 2 cores): CI runs them in their own step (make pytest-slow).
pytestmark = pytest.mark.slow

KEY = b"sentinel-key-material-0123456789"
ALIGN_FUNCS = [
    wm_align.match_tensors,
    wm_align.align,
    wm_align.descale_residual,
    wm_align.descriptor,
    wm_align.as_matrix,
    wm_align.assign,
    wm_detect.informed_views,
    wm_detect.blind_views,
    wm_io.open_source,
]


@pytest.mark.parametrize("fn", ALIGN_FUNCS, ids=lambda f: f.__name__)
def test_alignment_signatures_take_no_key(fn: Callable[..., Any]) -> None:
    params = inspect.signature(fn).parameters
    assert not [p for p in params if "key" in p.lower() or "seed" in p.lower()]


def _contains_key(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, WatermarkKey):
        return True
    if isinstance(obj, bytes | bytearray | memoryview):
        return KEY in bytes(obj)
    if isinstance(obj, str):
        return KEY.decode() in obj
    if depth < 3 and isinstance(obj, dict):
        return any(
            _contains_key(k, depth + 1) or _contains_key(v, depth + 1) for k, v in obj.items()
        )
    if depth < 3 and isinstance(obj, list | tuple | set):
        return any(_contains_key(x, depth + 1) for x in obj)
    return False


def test_alignment_never_sees_the_key_sentinel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}

    def spy(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            assert not _contains_key(list(args) + list(kwargs.values())), name
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapped

    for name in ("match_tensors", "align", "descale_residual", "descriptor", "as_matrix"):
        monkeypatch.setattr(wm_align, name, spy(name, getattr(wm_align, name)))
    orig = {k: v for k, v in sup.trained_mlp(0).items()}
    marked = wm.embed(orig, KEY, alpha=0.05)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(256, generator=g)
    suspect = dict(marked)
    suspect["fc1.weight"], suspect["fc1.bias"] = (
        marked["fc1.weight"][perm],
        marked["fc1.bias"][perm],
    )
    suspect["fc2.weight"] = marked["fc2.weight"][:, perm]
    suspect = sup.rename_reorder(suspect)
    rep = wm.check(suspect, KEY, original=orig)
    assert rep.verdict == "present"
    assert calls["align"] >= 3 and calls["match_tensors"] == 1 and calls["descriptor"] >= 6
    # the alignment is the same whatever the key: identical notes for another key
    other = wm.check(suspect, b"another-key-0123456789abcdef0123", original=orig)
    assert other.alignment == rep.alignment and other.verdict == "absent"
