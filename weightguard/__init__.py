"""weightguard: encrypt, sign, watermark and securely load safetensors model weights.

Importing this package is cheap: heavy dependencies load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
