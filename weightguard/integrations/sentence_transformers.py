"""One call for a ``SentenceTransformer`` whose files and weights come verified.

>>> from weightguard.integrations.sentence_transformers import load_sentence_transformer
>>> model = load_sentence_transformer("s3://models/minilm/", policy=PublicKey(...))
>>> model.encode(["a sentence"])

The model directory's side files (``modules.json``, pooling config, tokenizer,
``config.json``) are checked against the signature and written to a private
directory in memory (``/dev/shm``) for sentence-transformers to read, next to an
empty weights file (no tensors) so that it builds the modules without weights; the
transformer's weights are then decrypted into them from the artifact.  Plaintext
weights exist only in process memory.  Modules with weight files of their own (e.g.
``2_Dense``) are not supported (refused).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from typing import Any

from weightguard._internal.foundation import boundedjson
from weightguard.errors import ConfigError, DependencyMissing, FormatError, WeightguardError
from weightguard.loader import load_model

__all__ = ["load_sentence_transformer"]


def _empty_safetensors() -> bytes:
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """The empty weights file makes transformers warn about every tensor: silence it."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:  # pragma: no cover - a dependency of sentence-transformers
        yield
        return
    level = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(level)


# Module classes sentence-transformers itself provides; a modules.json ``type`` naming
# anything else (another package's class, a module's function) is refused: it is imported.
_MODULE_TYPE = re.compile(r"sentence_transformers\.(?:[A-Za-z_][A-Za-z0-9_]*\.){0,4}[A-Za-z_]\w*")


def _modules(raw: bytes, uri: str) -> list[dict[str, Any]]:
    """The verified ``modules.json``, each entry checked before sentence-transformers sees
    it: a module class of sentence-transformers, a path inside the model directory."""
    from weightguard.integrations._side_files import servable_side_file

    what = f"{uri}/modules.json"
    modules = boundedjson.loads(raw, what=what, max_bytes=1 << 20, max_depth=4)
    if (
        not isinstance(modules, list)
        or not modules
        or not all(isinstance(m, dict) for m in modules)
        or modules[0].get("path") not in ("", None)
    ):
        raise FormatError(f"{what}: the first module must be the transformer at the model's root")
    for m in modules:
        kind, path = m.get("type"), m.get("path", "")
        if not isinstance(kind, str) or not _MODULE_TYPE.fullmatch(kind):
            raise FormatError(
                f"{what}: module type {str(kind)[:120]!r} is not a sentence-transformers "
                "module class",
                hint="code shipped with or named by a model is never run",
            )
        if not isinstance(path, str):
            raise FormatError(f"{what}: module path {str(path)[:120]!r} is not a string")
        # a relative directory of safe names (its files, if any, are the signed side files
        # written next to it); never absolute, never "..", never outside the model
        if path and (path.startswith("/") or not servable_side_file(path.rstrip("/") + "/x.json")):
            raise FormatError(
                f"{what}: module path {path[:120]!r} is not a directory inside the model",
                hint="module paths are relative directories of the signed model",
            )
    return modules


def load_sentence_transformer(
    source: str | os.PathLike[str],
    *,
    policy: Any,
    device: str | None = None,
    **kwargs: Any,
) -> Any:
    """A ready ``SentenceTransformer`` from a signed, encrypted model directory.

    ``device``: where the model runs (default ``cpu``).  Keyword arguments in
    ``signature, data_key, key_options, allow_key, audit, workers, s3`` go to
    :func:`weightguard.open_model`; the others to ``SentenceTransformer``.  Side files
    the release encrypted (``--encrypt-other-files``) are decrypted in memory.  Every
    refusal (sentence-transformers' own included) is a :mod:`weightguard.errors` error
    and is audited.
    """
    from weightguard._internal.format.model_dir import is_weight_format
    from weightguard.integrations._side_files import (
        OPEN_OPTIONS,
        RENAMED_OPTIONS,
        audit_refusal,
        check_policy,
        opened,
        refusals,
        side_file_dir,
    )

    uri = os.fspath(source)
    try:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise DependencyMissing(
                "sentence-transformers is not installed",
                hint="pip install 'weightguard-ml[sentence-transformers]'",
            ) from None
        check_policy(policy)
        if kwargs.pop("trust_remote_code", False):
            raise ConfigError(
                "trust_remote_code is not supported: code shipped with a model is never run"
            )
    except WeightguardError as exc:
        audit_refusal(kwargs.get("audit"), exc, uri)
        raise
    open_opts = {
        k: kwargs.pop(k) for k in list(kwargs) if k in OPEN_OPTIONS or k in RENAMED_OPTIONS
    }
    with (
        opened(source, "cpu", policy, open_opts) as (handle, side),
        refusals(handle, uri, "sentence-transformers"),
    ):
        modules = _modules(side.read("modules.json"), uri)
        dirs = {m["path"].strip("/") + "/" for m in modules if m.get("path")}
        extra = [
            n
            for n in handle.side_files()
            if is_weight_format(n) and any(n.startswith(p) for p in dirs)
        ]
        if extra:
            raise FormatError(
                f"{uri}: module weight files outside the transformer are not supported "
                f"({', '.join(extra[:3])})",
                hint="load the transformer with weightguard.integrations.transformers",
            )
        stub = {"model.safetensors": _empty_safetensors()}
        with side_file_dir(side, stub) as d, _quiet_transformers():
            model = SentenceTransformer(
                str(d), device="cpu", local_files_only=True, trust_remote_code=False, **kwargs
            )
        transformer: Any = model[0]
        load_model(transformer.auto_model, handle, policy=policy)
    if device is not None:
        model.to(device)
    model.eval()
    return model
