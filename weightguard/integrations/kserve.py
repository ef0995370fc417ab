"""KServe storage initializer: ``weightguard-storage-initializer SRC_URI DEST_DIR``.

KServe runs the ``ClusterStorageContainer``'s container as the ``storage-initializer``
init container with two arguments, the InferenceService's ``storageUri`` and the model
directory (``/mnt/models``).  This entry point verifies the signature, unwraps the keys
and decrypts the model into ``DEST_DIR`` exactly like ``weightguard fetch``: all or
nothing, ``DEST_DIR`` must be on tmpfs, and the files are readable by the pod's group
(``fsGroup``) so that the model server, running as another user, can read them.

Configuration (environment; or a mounted JSON file named by ``WEIGHTGUARD_CONFIG``
with the same keys in lower case without the prefix, e.g. ``{"trust_keys": [...]}``;
the environment wins):

``WEIGHTGUARD_TRUST_KEYS``        signer public key PEM files (comma-separated, any of)
``WEIGHTGUARD_TRUST_CERT_CHAIN``  root CA PEM, then intermediates (comma-separated)
``WEIGHTGUARD_TRUST_VAULT_KEY``   a Vault Transit signing key URI
``WEIGHTGUARD_TRUST_IDENTITY`` / ``WEIGHTGUARD_TRUST_ISSUER``  Sigstore identity
``WEIGHTGUARD_ALLOWED_KEYS``      key URIs (``fnmatch`` patterns) the artifact may name
                                  for its data keys; any other is refused before Vault is
                                  asked (unset: the key the artifact names)
``WEIGHTGUARD_ALLOW_DISK``        ``1``: allow a DEST_DIR that is not tmpfs (not advised)
``WEIGHTGUARD_FILE_MODE`` / ``WEIGHTGUARD_DIR_MODE``  octal, default 0640 / 0750

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
from weightguard.errors import ConfigError

__all__ = ["URI_PREFIX", "settings", "storage_initialize"]

URI_PREFIX = "weightguard+"
_ENV = "WEIGHTGUARD_"
_LISTS = ("trust_keys", "trust_cert_chain", "allowed_keys")
_SCALARS = (
    "trust_vault_key",
    "trust_identity",
    "trust_issuer",
    "trust_root",
    "allow_disk",
    "file_mode",
    "dir_mode",
)


def settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The configuration from ``WEIGHTGUARD_CONFIG`` (JSON file) and the environment."""
    env = os.environ if env is None else env
    conf: dict[str, Any] = {}
    path = env.get(f"{_ENV}CONFIG")
    if path:
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"WEIGHTGUARD_CONFIG {path}: {exc.strerror}") from None
        doc = boundedjson.loads(
            raw, what=f"WEIGHTGUARD_CONFIG {path}", max_bytes=1 << 20, error=ConfigError
        )
        if not isinstance(doc, dict):
            raise ConfigError(f"WEIGHTGUARD_CONFIG {path}: not a JSON object")
        unknown = sorted(set(doc) - set(_LISTS) - set(_SCALARS))
        if unknown:
            raise ConfigError(f"WEIGHTGUARD_CONFIG {path}: unknown keys {unknown[:5]}")
        conf.update(doc)
    for name in (*_LISTS, *_SCALARS):
        value = env.get(_ENV + name.upper())
        if value is not None and value != "":
            conf[name] = (
                [v.strip() for v in value.split(",") if v.strip()] if (name in _LISTS) else value
            )
    for name in _LISTS:
        v = conf.get(name, [])
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
    """Fetch ``src_uri`` into ``dest_dir`` as configured by ``env``; the FetchResult."""
    from weightguard.policy import trust_policy
    from weightguard.transfer import fetch_model

    conf = settings(env)
    policy = trust_policy(
        public_keys=conf["trust_keys"],
        chain=conf["trust_cert_chain"],
        vault_key=conf.get("trust_vault_key"),
        identity=conf.get("trust_identity"),
        issuer=conf.get("trust_issuer"),
        trust_root=conf.get("trust_root"),
    )
    source = src_uri[len(URI_PREFIX) :] if src_uri.startswith(URI_PREFIX) else src_uri
    allow_disk = str(conf.get("allow_disk", "")).strip().lower() in ("1", "true", "yes")
    return fetch_model(
        source,
        dest_dir,
        policy=policy,
        # The one key rule (keys.providers.choose_key_uri): the artifact's key reference
        # is used only if this pod's allow-list admits it; a file:// key only if named.
        allowed_keys=conf["allowed_keys"],
        allow_disk=allow_disk,
        file_mode=_mode(conf.get("file_mode"), 0o640, "FILE_MODE"),
        dir_mode=_mode(conf.get("dir_mode"), 0o750, "DIR_MODE"),
    )
