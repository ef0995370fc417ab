"""Encrypt, decrypt, rewrap and inspect weightguard artifacts (format: docs/FORMAT.md).

>>> from weightguard import crypt
>>> crypt.encrypt_model("llama-3.2-1b/", "release/llama-3.2-1b/", "vault://transit/models",
...                     context="acme/llama-3.2-1b")
>>> crypt.inspect("release/llama-3.2-1b/model.safetensors")["key"]["key_version"]
1
>>> crypt.rewrap("release/llama-3.2-1b/")  # after `bao write -f transit/keys/models/rotate`

Model directories keep their file names: every ``*.safetensors`` shard is encrypted in
place of the original name (the magic bytes make it unreadable as safetensors, so no
tool can mistake it for weights), ``*.safetensors.index.json`` and the other files are
copied unchanged (or encrypted as raw content with ``encrypt_other_files=True``), so the
index stays valid.  One data key per file; all keys of a model are wrapped/unwrapped in
one provider round trip where the provider batches (Vault Transit).
"""

from __future__ import annotations

from weightguard._internal.crypt.base import PlaintextWriteWarning, is_encrypted
from weightguard._internal.crypt.decrypt import decrypt_file, decrypt_model
from weightguard._internal.crypt.encrypt import encrypt_bytes, encrypt_file, encrypt_model
from weightguard._internal.crypt.inspect import inspect
from weightguard._internal.crypt.rewrap import rewrap
from weightguard._internal.format.layout import DEFAULT_CHUNK_SIZE
from weightguard._internal.keys.providers import KeyProvider, create_key_file
from weightguard.manifest import WrappedKey

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "KeyProvider",
    "PlaintextWriteWarning",
    "WrappedKey",
    "create_key_file",
    "decrypt_file",
    "decrypt_model",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_model",
    "inspect",
    "is_encrypted",
    "rewrap",
]
