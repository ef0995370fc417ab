"""Which files of a model directory are weights: the one rule every area uses.

- A weight file is any ``*.safetensors`` file, at any depth (encrypt, decrypt, watermark,
  signature coverage): a nested one is weights too, and must never be copied as a plain
  side file.
- One *load* (one state dict) is the shards a verified index names, or without an index
  the top-level weight files: nested directories are separate components (diffusers'
  ``unet/``, ``vae/``) whose tensor names would collide in one dict.
"""

from __future__ import annotations

from collections.abc import Iterable

WEIGHT_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIX)


def is_index_file(name: str) -> bool:
    return name.endswith(INDEX_SUFFIX)


def top_level_weights(names: Iterable[str]) -> list[str]:
    """The weight files one load takes from a directory without an index (POSIX names)."""
    return sorted(n for n in names if is_weight_file(n) and "/" not in n)
