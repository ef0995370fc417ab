"""A missing optional dependency becomes one typed error naming the extra to install."""

from __future__ import annotations

import pytest

from weightguard._internal.foundation.extras import DIST, from_import_error, require
from weightguard.errors import ConfigError, DependencyMissing


def test_require_passes_for_installed_modules() -> None:
    require("loading tensors", "torch", "numpy")  # the dev environment has the extra


def test_missing_submodule_of_an_extra_names_the_extra() -> None:
    err = from_import_error(ModuleNotFoundError("No module named 'scipy'", name="scipy.stats"))
    assert isinstance(err, DependencyMissing) and isinstance(err, ConfigError)
    assert str(err) == (
        "this command needs scipy, which is not installed "
        f"(install the 'watermark' extra: pip install '{DIST}[watermark]')"
    )


def test_transformers_names_its_own_extra() -> None:
    err = from_import_error(ModuleNotFoundError(name="transformers"))
    assert err is not None and err.hint.endswith(f"pip install '{DIST}[transformers]'")


@pytest.mark.parametrize("name", [None, "", "weightguard_internal_typo", "torchvision"])
def test_other_import_errors_are_not_hidden(name: str | None) -> None:
    assert from_import_error(ModuleNotFoundError(name=name)) is None


def test_a_feature_names_its_own_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watermark needs scipy, which only the `watermark` extra installs (a loader
    host has `torch` without it): the hint names the extra that installs everything."""
    import importlib.util

    import weightguard.watermark as wm

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "scipy" else real(n, *a)
    )
    with pytest.raises(DependencyMissing) as info:
        wm.embed({}, b"k" * 32)
    assert str(info.value) == (
        "the watermark needs scipy, which is not installed "
        f"(install the 'watermark' extra: pip install '{DIST}[watermark]')"
    )
