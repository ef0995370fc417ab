"""One vocabulary for the settings the integrations read (the vLLM loader, the KServe
storage initializer): each concept has one name, the same key in a JSON configuration
(vLLM's ``--model-loader-extra-config``, KServe's ``WEIGHTGUARD_CONFIG`` file) and, upper
case with the ``WEIGHTGUARD_`` prefix, in the environment.  The trust anchors are
spelled as the CLI's options (``--trust-key`` -> ``trust_key`` /
``WEIGHTGUARD_TRUST_KEY``).

===============  ============================  =================  ===========================
key              environment variable          CLI option         meaning
===============  ============================  =================  ===========================
trust_key        WEIGHTGUARD_TRUST_KEY         --trust-key        signer public key PEM(s)
trust_chain      WEIGHTGUARD_TRUST_CHAIN       --trust-chain      root CA PEM, intermediates
trust_vault_key  WEIGHTGUARD_TRUST_VAULT_KEY   --trust-vault-key  Vault Transit signing key
trust_identity   WEIGHTGUARD_TRUST_IDENTITY    --identity         Sigstore identity
trust_issuer     WEIGHTGUARD_TRUST_ISSUER      --issuer           Sigstore OIDC issuer
trust_root       WEIGHTGUARD_TRUST_ROOT        --trust-root       Sigstore trusted_root.json
allow_key        WEIGHTGUARD_ALLOW_KEY         --allow-key        data-key URI patterns
audit_log        WEIGHTGUARD_AUDIT_LOG         --audit-log        audit destination
===============  ============================  =================  ===========================

The spellings of the previous release (vLLM: ``cert_chain``, ``vault_key``,
``WEIGHTGUARD_CERT_CHAIN``, ``WEIGHTGUARD_VAULT_KEY``; KServe: ``trust_keys``,
``trust_cert_chain``, ``WEIGHTGUARD_TRUST_KEYS``, ``WEIGHTGUARD_TRUST_CERT_CHAIN``; both:
``allowed_keys``, ``WEIGHTGUARD_ALLOWED_KEYS``) are still read, with a
:class:`FutureWarning`, until the next release.

Errors raised inside an integration carry hints written once, in the options' spelling;
:func:`retold` rewrites them in the integration's own words (its variables, never an
option it lacks) with :func:`weightguard.vocabulary.retell`.  (A Python caller reads
them in its keywords: ``str(exc)``, see :mod:`weightguard.vocabulary`.)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from weightguard.errors import ConfigError, WeightguardError
from weightguard.vocabulary import retell

__all__ = [
    "LISTS",
    "RENAMED",
    "TRUST",
    "env_name",
    "lookup",
    "policy_from",
    "retold",
]

PREFIX = "WEIGHTGUARD_"
TRUST = (
    "trust_key",
    "trust_chain",
    "trust_vault_key",
    "trust_identity",
    "trust_issuer",
    "trust_root",
)
LISTS = ("trust_key", "trust_chain", "allow_key")  # comma-separated in the environment
# old spelling -> new, config key and (upper case, prefixed) environment variable alike
RENAMED = {
    "trust_keys": "trust_key",
    "trust_cert_chain": "trust_chain",
    "cert_chain": "trust_chain",
    "vault_key": "trust_vault_key",
    "allowed_keys": "allow_key",
}

# CLI option (as hints name them) -> the setting that does the same in an integration
CLI_OPTIONS = {
    "--trust-key": "trust_key",
    "--key": "trust_key",
    "--trust-chain": "trust_chain",
    "--cert-chain": "trust_chain",
    "--trust-vault-key": "trust_vault_key",
    "--vault-key": "trust_vault_key",
    "--identity": "trust_identity",
    "--issuer": "trust_issuer",
    "--trust-root": "trust_root",
    "--allow-key": "allow_key",
    "--audit-log": "audit_log",
}


def env_name(key: str) -> str:
    return PREFIX + key.upper()


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated: use {new} (the old name is read until the next release)",
        FutureWarning,
        stacklevel=4,
    )


def lookup(config: Mapping[str, Any], env: Mapping[str, str], key: str) -> Any:
    """``key`` from ``config`` (a JSON object), else from the environment; the old
    spellings (:data:`RENAMED`) are read with a deprecation warning.  Empty = unset."""
    olds = [o for o, n in RENAMED.items() if n == key]
    value = config.get(key)
    if value in (None, ""):
        for old in olds:
            if config.get(old) not in (None, ""):
                _renamed(repr(old), repr(key))
                value = config[old]
                break
    if value in (None, ""):
        value = env.get(env_name(key))
    if value in (None, ""):
        for old in olds:
            if env.get(env_name(old)):
                _renamed(env_name(old), env_name(key))
                value = env[env_name(old)]
                break
    return None if value in (None, "") else value


def as_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"weightguard setting {key!r} must be a string or a list of strings")


def policy_from(settings: Mapping[str, Any], *, unsafe: bool = False) -> Any:
    """The trust policy of :data:`TRUST` settings (lists already split)."""
    from weightguard.policy import trust_policy

    return trust_policy(
        trust_key=settings.get("trust_key") or (),
        trust_chain=settings.get("trust_chain") or (),
        trust_vault_key=settings.get("trust_vault_key"),
        identity=settings.get("trust_identity"),
        issuer=settings.get("trust_issuer"),
        trust_root=settings.get("trust_root"),
        unsafe_no_verification=unsafe,
    )


def retold(exc: WeightguardError, names: Mapping[str, str], fallback: str) -> WeightguardError:
    """``exc`` with its hint in the integration's words: each CLI option it names becomes
    ``names[option]`` or ``names[setting]`` (how the integration spells the option, or the
    setting :data:`CLI_OPTIONS` maps it to); a clause naming an option the integration
    lacks is dropped; nothing left -> ``fallback`` (:func:`weightguard.vocabulary.retell`).
    In place (type, path and chunk kept); returns ``exc``."""
    if not exc.hint or "--" not in exc.hint:
        return exc
    spelled = {o: names[s] for o, s in CLI_OPTIONS.items() if s in names}
    spelled.update({o: n for o, n in names.items() if o.startswith("--")})
    exc.hint = retell(exc.hint, spelled, fallback, env_prefix=PREFIX)
    return exc
