"""Where a release's signature lies by default: the one rule, for every entry point.

A directory (or an ``s3://`` prefix) carries its bundle among its files as
``model.sig`` (what ``model_signing`` writes and reads); a single file carries it beside
itself as ``<file>.sig``.  Co-signatures lie in ``<bundle>.d/<name>.sig``
(``model.sig.d/`` in a directory), written by ``weightguard sign --co-sign``.
"""

from __future__ import annotations

import os

from weightguard._internal.foundation.s3 import is_s3_uri

__all__ = [
    "COSIGN_SUFFIX",
    "PRIMARY_SIGNATURE",
    "SIGNATURE_SUFFIX",
    "default_signature",
    "signature_name",
]

#: A directory's (or S3 prefix's) primary bundle, among its files.
PRIMARY_SIGNATURE = "model.sig"
#: A single file's bundle is ``<file>`` + this.
SIGNATURE_SUFFIX = ".sig"
#: Co-signatures of bundle ``B`` lie in the directory ``B`` + this.
COSIGN_SUFFIX = ".d"


def signature_name(file_name: str | None) -> str:
    """The default bundle's name relative to the model's directory: ``model.sig`` for a
    directory or prefix (``file_name`` None), ``<file_name>.sig`` beside a single file."""
    return PRIMARY_SIGNATURE if file_name is None else file_name + SIGNATURE_SUFFIX


def default_signature(model: str | os.PathLike[str], *, is_dir: bool | None = None) -> str:
    """The default bundle of ``model`` (a local directory or file, an ``s3://`` prefix or
    object) as a path or URI.  ``is_dir`` None: what a local path is; an S3 URI is a
    prefix (a release as ``weightguard push`` uploads it)."""
    text = os.fspath(model)
    if is_dir is None:
        is_dir = is_s3_uri(text) or os.path.isdir(text)
    if is_s3_uri(text):
        return text.rstrip("/") + "/" + PRIMARY_SIGNATURE if is_dir else text + SIGNATURE_SUFFIX
    return os.path.join(text, PRIMARY_SIGNATURE) if is_dir else text + SIGNATURE_SUFFIX
