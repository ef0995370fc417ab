"""Which files of a model directory are weights: the one home of the rule, for every area.

Three questions, each asked in one place, each with its case handling on purpose:

- :func:`is_weight_file` -- the safetensors weights weightguard reads and writes: any
  ``*.safetensors`` file, at any depth (encrypt, decrypt, watermark, load, push): a
  nested one is weights too, and must never be copied as a plain side file.  The
  suffix is matched exactly (lower case), as safetensors and transformers match it.
- :func:`is_signed_weight_name` -- what a signature must cover as weights (coverage
  rules, by name; ``listing.is_weight`` also sniffs contents): ``*.safetensors`` and
  ``*.index.json``, in any case -- failing closed, a ``MODEL.SAFETENSORS`` left
  unsigned is refused rather than taken for a side file.
- :func:`is_weight_format` -- weights in any format (``pytorch_model.bin``,
  ``tf_model.h5``, ``*.onnx``...), in any case: never served to a framework as a side
  file.

One *load* (one state dict) is the shards a verified index names, or without an index
the top-level weight files: nested directories are separate components (diffusers'
``unet/``, ``vae/``) whose tensor names would collide in one dict.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "INDEX_SUFFIX",
    "WEIGHT_FORMAT_SUFFIXES",
    "WEIGHT_SUFFIX",
    "is_index_file",
    "is_signed_weight_name",
    "is_weight_file",
    "is_weight_format",
    "top_level_weights",
]

WEIGHT_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
# Weights in other formats (pytorch_model.bin, onnx/, tf_model.h5, ...) next to a
# safetensors release.
WEIGHT_FORMAT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx_data", ".h5",
    ".msgpack", ".ot", ".gguf", ".npz", ".xml", ".tflite", ".mlmodel",
)  # fmt: skip
_SIGNED_WEIGHT_SUFFIXES = (WEIGHT_SUFFIX, ".index.json")


def is_weight_file(name: str) -> bool:
    """A safetensors weight file (exact lower-case suffix)."""
    return name.endswith(WEIGHT_SUFFIX)


def is_signed_weight_name(name: str) -> bool:
    """Weights a signature must cover, by name only (any case; remote listings cannot
    be sniffed)."""
    return name.rsplit("/", 1)[-1].lower().endswith(_SIGNED_WEIGHT_SUFFIXES)


def is_weight_format(name: str) -> bool:
    """Weights in any format (any case): never a side file."""
    return name.lower().endswith(WEIGHT_FORMAT_SUFFIXES)


def is_index_file(name: str) -> bool:
    return name.endswith(INDEX_SUFFIX)


def top_level_weights(names: Iterable[str]) -> list[str]:
    """The weight files one load takes from a directory without an index (POSIX names)."""
    return sorted(n for n in names if is_weight_file(n) and "/" not in n)
