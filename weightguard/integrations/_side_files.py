"""Verified side files (config, tokenizer) of an opened model, for framework loaders.

Frameworks read configuration from a directory.  The files are checked against the
signature by :meth:`ModelHandle.read_side_file` and written, 0600, into a private 0700
directory on a memory file system when one is available (``/dev/shm``); weights are
never written there.  The directory is removed when the context exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weightguard._internal.foundation import boundedjson
from weightguard.errors import FormatError

__all__ = ["read_config", "side_file_dir"]

CONFIG_NAME = "config.json"


def _scratch_root() -> str | None:
    from weightguard.transfer import is_memory_fs

    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and is_memory_fs(shm) else None


# Weights in other formats (pytorch_model.bin, onnx/, tf_model.h5, ...) next to the
# safetensors release: never needed here and never written out.
WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx_data", ".h5",
    ".msgpack", ".ot", ".gguf", ".npz", ".xml", ".tflite", ".mlmodel",
)  # fmt: skip


# The one rule for what a framework is given next to the weights: an allow-list of the
# formats configs and tokenizers come in (never code, never weights in any format), with
# safe, shallow names.  The index is left out: the weights come from weightguard.
SIDE_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SKIP = {"model.safetensors.index.json"}


def servable_side_file(name: str) -> bool:
    parts = name.split("/")
    return (
        name not in _SKIP
        and name.endswith(SIDE_SUFFIXES)
        and len(parts) <= 3
        and all(_NAME_PART.fullmatch(p) for p in parts)
    )


def is_weight_file(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)


@contextlib.contextmanager
def side_file_dir(handle: Any, extra: dict[str, bytes] | None = None) -> Iterator[Path]:
    """A private directory holding the verified side files of ``handle`` (weight
    files of other formats are left out)."""
    d = Path(tempfile.mkdtemp(prefix="weightguard-side-", dir=_scratch_root()))
    try:
        for name in handle.side_files():
            if not servable_side_file(name):
                continue
            data = handle.read_side_file(name)
            target = d / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for name, data in (extra or {}).items():
            fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def read_config(handle: Any, uri: str) -> dict[str, Any]:
    """The model's verified ``config.json`` as a dict."""
    # read_side_file gives the typed errors: missing (SourceError), unsigned, tampered
    raw = handle.read_side_file(CONFIG_NAME)
    # the one bounded reader: configs hold floats (layer_norm_eps) and some nesting
    doc = boundedjson.loads(raw, what=f"{uri}/{CONFIG_NAME}", max_bytes=16 << 20, floats=True)
    if not isinstance(doc, dict):
        raise FormatError(f"{uri}/{CONFIG_NAME}: not a JSON object")
    return doc
