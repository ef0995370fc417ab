"""vLLM LoRA adapters from weightguard releases: verified and decrypted in the worker.

    WEIGHTGUARD_TRUST_KEY=/etc/weightguard/release.pub \\
    WEIGHTGUARD_ALLOW_KEY='vault://transit/*' \\
        vllm serve ... --enable-lora --lora-modules sql=/srv/adapters/sql-lora

A PEFT adapter released with weightguard (``adapter_config.json``,
``adapter_model.safetensors`` encrypted or plain, ``model.sig``) is given to vLLM like any
local adapter: ``--lora-modules``, ``LoRARequest(name, id, path)``, the
``/v1/load_lora_adapter`` endpoint or a LoRA resolver plugin that returns its path.

Where vLLM reads an adapter is one seam, in the process that runs the model:
``WorkerLoRAManager._load_adapter`` (``PEFTHelper.from_local_dir`` reads
``adapter_config.json``, ``LoRAModel.from_local_checkpoint`` opens
``adapter_model.safetensors`` with ``safetensors.safe_open``).  A LoRA resolver runs in
the API server and only hands the worker a path, so it cannot carry verified bytes; the
check has to happen here.  :func:`register` (called by the vLLM plugin,
:func:`weightguard.integrations.vllm.register`) wraps that method.  For an adapter
directory holding weightguard's signature or an encrypted weight file:

* the release is opened once with :func:`weightguard.safe_open` under the caller's policy
  (signature, coverage, allowed key references);
* ``adapter_config.json`` is checked against its signed digest (decrypted when the release
  encrypted it) and vLLM builds its LoRA config from those bytes, not from the file;
* vLLM's own loader then reads the weights through the safetensors drop-in
  (:mod:`weightguard.integrations.safetensors`) pinned to that verified handle: every
  record checked against its signed digest and AEAD tag, decrypted in memory.  Plaintext
  adapter weights are never written anywhere.

Trust comes only from the caller: the ``WEIGHTGUARD_*`` environment of the vLLM process
(the names of :mod:`weightguard.integrations.vllm`: ``WEIGHTGUARD_TRUST_KEY``,
``WEIGHTGUARD_TRUST_CHAIN``, ``WEIGHTGUARD_TRUST_VAULT_KEY``, ``WEIGHTGUARD_TRUST_IDENTITY``
with ``WEIGHTGUARD_TRUST_ISSUER``, ``WEIGHTGUARD_TRUST_ROOT``, ``WEIGHTGUARD_ALLOW_KEY``,
``WEIGHTGUARD_AUDIT_LOG``).  A release without a trust anchor there is refused.  When a
trust anchor is set, a plain adapter without a signature is refused too (audited
``load.denied``), unless the caller sets ``WEIGHTGUARD_LORA_ALLOW_UNSIGNED=1``; with no
weightguard setting at all, plain adapters load as vLLM loads them.  A refusal is one
typed :mod:`weightguard.errors` error, audited, and the request fails with it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from weightguard._internal.signing.location import PRIMARY_SIGNATURE
from weightguard.errors import FormatError, VerificationError, WeightguardError
from weightguard.integrations import _settings

__all__ = ["ALLOW_UNSIGNED_ENV", "is_release", "register", "verified_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ALLOW_UNSIGNED_ENV = "WEIGHTGUARD_LORA_ALLOW_UNSIGNED"
# How a hint names a setting here: its environment variable.
_NAMES = {k: _settings.env_name(k) for k in (*_settings.TRUST, "allow_key", "audit_log")}


@dataclass(frozen=True)
class _Verified:
    path: str  # realpath of the adapter directory
    config: dict[str, Any]  # adapter_config.json, checked against the signature


# The adapter being loaded in this context (vLLM loads adapters one at a time per worker).
_CURRENT: contextvars.ContextVar[_Verified | None] = contextvars.ContextVar(
    "weightguard_lora", default=None
)


def is_release(path: str | os.PathLike[str]) -> bool:
    """Whether adapter directory ``path`` is a weightguard release: it holds weightguard's
    signature, or its weight file is a weightguard artifact (encrypted)."""
    from weightguard._internal.format import layout as fmt

    root = os.fspath(path)
    if os.path.isfile(os.path.join(root, PRIMARY_SIGNATURE)):
        return True
    try:
        with open(os.path.join(root, WEIGHTS_NAME), "rb") as fh:
            return bool(fmt.is_artifact(fh.read(fmt.MAGIC_PROBE)))
    except OSError:
        return False


@dataclass(frozen=True)
class _Options:
    """The caller's settings, from the vLLM process's environment (the names of
    :mod:`weightguard.integrations.vllm` and the KServe initializer)."""

    anchors: dict[str, Any]
    allow_key: tuple[str, ...]
    audit_log: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> _Options:
        def get(key: str) -> Any:
            return _settings.lookup({}, env, key)

        anchors: dict[str, Any] = {}
        for k in _settings.TRUST:
            v = get(k)
            anchors[k] = _settings.as_list(v, k) if k in ("trust_key", "trust_chain") else v
        return cls(anchors, _settings.as_list(get("allow_key"), "allow_key"), get("audit_log"))

    def has_anchor(self) -> bool:
        return any(self.anchors.values())

    def policy(self) -> Any:
        from weightguard.errors import ConfigError

        if not self.has_anchor():
            raise ConfigError(
                "a weightguard LoRA adapter needs a trust anchor in the vLLM process's environment",
                hint=_hint(),
            )
        return _settings.policy_from(self.anchors)

    def audit(self) -> Any:
        from weightguard.audit import AuditLog

        return AuditLog.open(self.audit_log)


def _options(env: Mapping[str, str] | None = None) -> _Options:
    return _Options.from_env(os.environ if env is None else env)


def _allow_unsigned(env: Mapping[str, str]) -> bool:
    return env.get(ALLOW_UNSIGNED_ENV, "").strip().lower() in ("1", "true", "yes")


def _hint() -> str:
    return (
        "set the trust anchor in the vLLM process's environment: WEIGHTGUARD_TRUST_KEY, "
        "WEIGHTGUARD_TRUST_CHAIN, WEIGHTGUARD_TRUST_VAULT_KEY or WEIGHTGUARD_TRUST_IDENTITY "
        "with WEIGHTGUARD_TRUST_ISSUER (and WEIGHTGUARD_ALLOW_KEY for the data key)"
    )


def _refuse_unsigned(path: str, options: _Options) -> None:
    from weightguard.integrations._side_files import audit_refusal

    exc = VerificationError(
        f"{path}: LoRA adapter without a weightguard signature; the caller's policy requires one",
        hint=f"release the adapter with weightguard (encrypt + sign), or set "
        f"{ALLOW_UNSIGNED_ENV}=1 to load unsigned plain adapters",
    )
    audit = None
    with contextlib.suppress(WeightguardError):
        audit = options.audit()
    try:
        audit_refusal(audit, exc, path)
    finally:
        if audit is not None:
            audit.close()
    raise exc


@contextlib.contextmanager
def verified_adapter(path: str, options: _Options | None = None) -> Iterator[dict[str, Any]]:
    """Open release ``path`` under ``options``' policy; yield its verified
    ``adapter_config.json`` (a dict).  While open, safetensors opens of its weight file
    go to the verified handle (the drop-in, pinned) and vLLM's config reader gets the
    verified config.  Every error is one audited weightguard error."""
    from weightguard.integrations import safetensors as dropin
    from weightguard.integrations._side_files import SideFiles, audit_refusal
    from weightguard.lazy import safe_open

    options = _options() if options is None else options
    allowed = options.allow_key or None
    audit = None
    try:
        audit = options.audit()
        policy = options.policy()
        with safe_open(path, policy=policy, allow_key=allowed, audit=audit, file=WEIGHTS_NAME) as f:
            raw = SideFiles(f.handle, path, allow_key=allowed, audit=audit).read_many(
                [CONFIG_NAME]
            )[CONFIG_NAME]
            try:
                cfg = json.loads(raw)
                if not isinstance(cfg, dict):
                    raise TypeError("not an object")
            except (ValueError, TypeError) as exc:
                raise FormatError(
                    f"{path}/{CONFIG_NAME}: not a PEFT adapter config ({exc})"
                ) from None
            token = _CURRENT.set(_Verified(os.path.realpath(path), cfg))
            try:
                with (
                    dropin.enabled(policy, allow_key=allowed, audit=audit),
                    dropin.pinned(f, [os.path.join(path, WEIGHTS_NAME)]),
                ):
                    yield dict(cfg)
            finally:
                _CURRENT.reset(token)
    except WeightguardError as exc:
        if not getattr(exc, "_weightguard_audited", False) and not _audited_by_open(exc):
            audit_refusal(audit, exc, path)
        raise _settings.retold(exc, _NAMES, _hint()) from None
    finally:
        if audit is not None:
            audit.close()


def _audited_by_open(exc: WeightguardError) -> bool:
    """Errors the loader audits itself (tamper, verification, key): not audited twice."""
    from weightguard.errors import ConfigError

    return not isinstance(exc, (ConfigError, FormatError))


def _load_adapter_wrapper(original: Any, resolve: Callable[[str], str]) -> Any:
    """``original`` (``WorkerLoRAManager._load_adapter``) with the check in front;
    ``resolve``: vLLM's ``get_adapter_absolute_path`` (the directory it will read)."""

    @functools.wraps(original)
    def _load_adapter(self: Any, lora_request: Any) -> Any:
        path = resolve(lora_request.lora_path)
        if not os.path.isdir(path):
            return original(self, lora_request)  # vLLM reports it
        env = os.environ
        if is_release(path):
            with verified_adapter(path, _options(env)):
                return original(self, lora_request)
        options = _options(env)
        if options.has_anchor() and not _allow_unsigned(env):
            _refuse_unsigned(path, options)
        return original(self, lora_request)

    setattr(_load_adapter, "_weightguard", True)  # noqa: B010
    return _load_adapter


def _from_local_dir_wrapper(original: Any) -> Any:
    @functools.wraps(original)
    def from_local_dir(cls: Any, lora_path: str, max_position_embeddings: int | None) -> Any:
        current = _CURRENT.get()
        if current is None or os.path.realpath(lora_path) != current.path:
            return original(cls, lora_path, max_position_embeddings)
        config = dict(current.config)  # the signed bytes, never the file on disk
        config["vllm_max_position_embeddings"] = max_position_embeddings
        return cls.from_dict(config)

    setattr(from_local_dir, "_weightguard", True)  # noqa: B010
    return from_local_dir


def register() -> None:
    """Wrap vLLM's adapter loading (idempotent); a no-op where vLLM has no LoRA."""
    try:
        from vllm.lora.peft_helper import PEFTHelper
        from vllm.lora.utils import get_adapter_absolute_path
        from vllm.lora.worker_manager import WorkerLoRAManager
    except ImportError:  # pragma: no cover - a vLLM without LoRA support
        return
    if not getattr(WorkerLoRAManager._load_adapter, "_weightguard", False):
        wrapped = _load_adapter_wrapper(WorkerLoRAManager._load_adapter, get_adapter_absolute_path)
        setattr(WorkerLoRAManager, "_load_adapter", wrapped)  # noqa: B010
    current = PEFTHelper.__dict__["from_local_dir"]
    if not getattr(current.__func__, "_weightguard", False):
        wrapped = classmethod(_from_local_dir_wrapper(current.__func__))
        setattr(PEFTHelper, "from_local_dir", wrapped)  # noqa: B010
