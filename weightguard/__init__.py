"""weightguard: encrypt, sign, watermark and securely load safetensors model weights.

Importing this package is cheap: heavy dependencies load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers only; at run time these load on first use
    from weightguard.lazy import safe_open
    from weightguard.loader import load_file, load_model, open_model

__version__ = "0.1.0"

__all__ = ["__version__", "load_file", "load_model", "open_model", "safe_open"]

# Public loader API, imported on first use so `import weightguard` stays cheap.
_LAZY = {
    "load_file": "weightguard.loader",
    "load_model": "weightguard.loader",
    "open_model": "weightguard.loader",
    "safe_open": "weightguard.lazy",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'weightguard' has no attribute {name!r}")
    import gc
    import importlib

    # The loader's import allocates enough to set off a full collection, which after
    # `import torch` walks torch's millions of objects: 100-200 ms of a first call.  The
    # collector is paused for the import only; nothing it would free is lost.
    paused = gc.isenabled()
    gc.disable()
    try:
        value = getattr(importlib.import_module(module), name)
    finally:
        if paused:
            gc.enable()
    globals()[name] = value
    return value
