"""KServe storage initializer: ``weightguard-storage-initializer SRC_URI DEST_DIR``.

KServe runs the ``ClusterStorageContainer``'s container as the ``storage-initializer``
init container with two arguments, the InferenceService's ``storageUri`` and the model
directory (``/mnt/models``).  This entry point verifies the signature, unwraps the keys
and decrypts the model into ``DEST_DIR`` exactly like ``weightguard fetch``: all or
nothing, ``DEST_DIR`` must be on tmpfs, and the files are readable by the pod's group
(``fsGroup``) so that the model server, running as another user, can read them.

Configuration (environment; or a mounted JSON file named by ``WEIGHTGUARD_CONFIG``
with the same keys in lower case without the prefix, e.g. ``{"trust_key": [...]}``;
the environment wins).  The names are the integrations' one vocabulary
(:mod:`weightguard.integrations._settings`, shared with the vLLM loader):

``WEIGHTGUARD_TRUST_KEY``         signer public key PEM files (comma-separated, any of)
``WEIGHTGUARD_TRUST_CHAIN``       root CA PEM, then intermediates (comma-separated)
``WEIGHTGUARD_TRUST_VAULT_KEY``   a Vault Transit signing key URI
``WEIGHTGUARD_TRUST_IDENTITY`` / ``WEIGHTGUARD_TRUST_ISSUER``  Sigstore identity
``WEIGHTGUARD_TRUST_ROOT``        Sigstore trusted_root.json
``WEIGHTGUARD_ALLOW_KEY``         key URIs (``fnmatch`` patterns) the artifact may name
                                  for its data keys; any other is refused before Vault is
                                  asked (unset: the key the artifact names)
``WEIGHTGUARD_ALLOW_DISK``        ``1``: allow a DEST_DIR that is not tmpfs (not advised)
``WEIGHTGUARD_FILE_MODE`` / ``WEIGHTGUARD_DIR_MODE``  octal, default 0640 / 0750

``WEIGHTGUARD_TRUST_KEYS`` and ``WEIGHTGUARD_TRUST_CERT_CHAIN`` (and ``trust_keys``,
``trust_cert_chain`` in the file), the previous release's names, are still read with a
deprecation warning.

``SRC_URI`` is ``weightguard+s3://bucket/prefix/`` (the prefix the manifest registers,
so it does not collide with KServe's own ``s3://`` initializer), ``s3://...`` or a
local path.  Vault/S3/audit settings are the usual environment (``VAULT_ADDR``,
``WEIGHTGUARD_VAULT_AUTH``, ``AWS_ENDPOINT_URL_S3``, ``WEIGHTGUARD_AUDIT_LOG``).
Exit status 0 only if everything verified; otherwise one ``error: ...`` line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightguard._internal.foundation import boundedjson
from weightguard.errors import ConfigError, WeightguardError
from weightguard.integrations._settings import (
    LISTS,
    RENAMED,
    TRUST,
    env_name,
    lookup,
    policy_from,
    retold,
)
from weightguard.integrations._side_files import audit_refusal

__all__ = ["URI_PREFIX", "VARIABLES", "settings", "storage_initialize"]

URI_PREFIX = "weightguard+"
_ENV = "WEIGHTGUARD_"
_LISTS = LISTS
_SCALARS = (
    "trust_vault_key",
    "trust_identity",
    "trust_issuer",
    "trust_root",
    "allow_disk",
    "file_mode",
    "dir_mode",
)
# Every variable the initializer reads (its hints name only these).
VARIABLES = (
    "WEIGHTGUARD_CONFIG",
    *(env_name(k) for k in (*_LISTS, *_SCALARS)),
    "WEIGHTGUARD_AUDIT_LOG",
)
# How the initializer spells a setting in a hint: its environment variable.
_NAMES = {k: env_name(k) for k in (*TRUST, "allow_key", "audit_log")}
_FALLBACK = "configure the initializer with its variables: " + ", ".join(
    env_name(k) for k in (*TRUST, "allow_key", "allow_disk")
)


def settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The configuration from ``WEIGHTGUARD_CONFIG`` (JSON file) and the environment."""
    env = os.environ if env is None else env
    doc: dict[str, Any] = {}
    path = env.get(f"{_ENV}CONFIG")
    if path:
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"WEIGHTGUARD_CONFIG {path}: {exc.strerror}") from None
        loaded = boundedjson.loads(
            raw, what=f"WEIGHTGUARD_CONFIG {path}", max_bytes=1 << 20, error=ConfigError
        )
        if not isinstance(loaded, dict):
            raise ConfigError(f"WEIGHTGUARD_CONFIG {path}: not a JSON object")
        unknown = sorted(set(loaded) - set(_LISTS) - set(_SCALARS) - set(RENAMED))
        if unknown:
            raise ConfigError(
                f"WEIGHTGUARD_CONFIG {path}: unknown keys {unknown[:5]}",
                hint="known: " + ", ".join((*_LISTS, *_SCALARS)),
            )
        doc = loaded
    conf: dict[str, Any] = {}
    for name in (*_LISTS, *_SCALARS):
        # the environment wins over the file
        value = lookup({}, env, name)
        if value is None:
            value = lookup(doc, {}, name)
        if value is not None:
            conf[name] = value
    for name in _LISTS:
        v = conf.get(name, [])
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{_ENV}{name.upper()} must be a list of strings")
        conf[name] = v
    return conf


def _mode(value: Any, default: int, what: str) -> int:
    if value is None:
        return default
    try:
        return int(str(value), 8)
    except ValueError:
        raise ConfigError(f"{_ENV}{what} {value!r} is not an octal mode") from None


def storage_initialize(src_uri: str, dest_dir: str, env: Mapping[str, str] | None = None) -> Any:
    """Fetch ``src_uri`` into ``dest_dir`` as configured by ``env``; the FetchResult.

    Errors are :mod:`weightguard.errors` errors whose hints name the initializer's
    environment variables (never a CLI option it does not have)."""
    try:
        return _initialize(src_uri, dest_dir, env)
    except WeightguardError as exc:
        retold(exc, _NAMES, _FALLBACK)  # in place: its cause stays chained
        raise


def _initialize(src_uri: str, dest_dir: str, env: Mapping[str, str] | None) -> Any:
    from weightguard.audit import AuditLog
    from weightguard.transfer import fetch_model

    env = os.environ if env is None else env
    source = src_uri[len(URI_PREFIX) :] if src_uri.startswith(URI_PREFIX) else src_uri
    audit = AuditLog.from_env(env)
    try:
        try:
            conf = settings(env)
            policy = policy_from(conf)
        except WeightguardError as exc:  # refused before the model is opened: audited here
            audit_refusal(audit, exc, source)
            raise
        allow_disk = str(conf.get("allow_disk", "")).strip().lower() in ("1", "true", "yes")
        return fetch_model(
            source,
            dest_dir,
            policy=policy,
            # The one key rule (keys.providers.choose_key_uri): the artifact's key reference
            # is used only if this pod's allow-list admits it; a file:// key only if named.
            allow_key=conf["allow_key"],
            allow_disk=allow_disk,
            file_mode=_mode(conf.get("file_mode"), 0o640, "FILE_MODE"),
            dir_mode=_mode(conf.get("dir_mode"), 0o750, "DIR_MODE"),
            audit=audit,
        )
    except WeightguardError as exc:
        if exc.hint and "--allow-disk" in exc.hint:
            exc.hint = (
                "mount an emptyDir with medium: Memory at the model directory, or set "
                "WEIGHTGUARD_ALLOW_DISK=1 (plaintext weights on disk: not advised)"
            )
        elif exc.hint and "--replace" in exc.hint:
            exc.hint = "the model directory must be empty when the initializer starts"
        raise
    finally:
        audit.close()
