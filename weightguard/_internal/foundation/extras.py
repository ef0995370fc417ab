"""Optional dependencies by role, and the one typed error when one is missing.

The core distribution (release and audit: encrypt, sign, verify, inspect, rewrap,
fetch, push, audit) installs without torch, numpy or scipy.  The loader's tensor
path and the watermark need the ``[torch]`` extra; the integrations their own.
Those modules are imported lazily, so a missing one must be turned into a
:class:`~weightguard.errors.DependencyMissing` that names the extra to install,
not a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib.util

from weightguard.errors import DependencyMissing

# The name on PyPI: `weightguard` there is an unrelated project (see README.md).
DIST = "weightguard-ml"

# top-level module -> the extra that installs it
EXTRA_OF: dict[str, str] = {
    "torch": "torch",
    "numpy": "torch",
    "scipy": "watermark",
    "safetensors": "torch",
    "transformers": "transformers",
    "vllm": "vllm",
    "matplotlib": "report",
    "cyclonedx": "report",
}


def install_command(extra: str) -> str:
    return f"pip install '{DIST}[{extra}]'"


def missing(feature: str, module: str, extra: str | None = None) -> DependencyMissing:
    extra = extra or EXTRA_OF[module]
    return DependencyMissing(
        f"{feature} needs {module}, which is not installed",
        hint=f"install the {extra!r} extra: {install_command(extra)}",
    )


def require(feature: str, *modules: str, extra: str | None = None) -> None:
    """Raise DependencyMissing for the first of ``modules`` that is not installed,
    naming ``extra`` (the feature's own extra, which installs them all) if given.

    ``find_spec`` looks without importing, so a check costs no torch start-up.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise missing(feature, module, extra)


def from_import_error(exc: ModuleNotFoundError) -> DependencyMissing | None:
    """The typed error for an optional dependency's ModuleNotFoundError, else None."""
    top = (exc.name or "").partition(".")[0]
    if top not in EXTRA_OF:
        return None
    return missing("this command", top)
