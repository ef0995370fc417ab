"""The loader's entry points share one options object: their keyword arguments (besides
``policy``, and load_file's ``progress`` for its one load) are
:class:`weightguard.loader.LoadOptions`'s fields, with the same defaults."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from weightguard.loader import LoadOptions, load_file, load_model, open_model


@pytest.mark.parametrize("entry", [open_model, load_file])
def test_entry_point_keywords_are_the_options(entry: object) -> None:
    params = inspect.signature(entry).parameters  # type: ignore[arg-type]
    keywords = {
        n: p.default
        for n, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("policy", "progress")
    }
    fields = {f.name: f.default for f in dataclasses.fields(LoadOptions)}
    assert keywords == fields


def test_load_model_passes_the_options_on() -> None:
    params = inspect.signature(load_model).parameters
    assert params["options"].kind is inspect.Parameter.VAR_KEYWORD
    assert {"policy", "strict"} <= set(params)


def test_options_are_frozen() -> None:
    opts = LoadOptions(workers=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.workers = 3  # type: ignore[misc]
    assert dataclasses.replace(opts, decrypt_on="cpu").workers == 2
