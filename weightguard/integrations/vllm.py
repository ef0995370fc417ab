"""vLLM model loader ``weightguard``: serve an encrypted, signed model, verified as it loads.

    vllm serve s3://models/minilm/ --load-format weightguard \\
        --model-loader-extra-config '{"trust_key": "/etc/weightguard/release.pub"}'

Installing weightguard registers the loader in every vLLM process through the
``vllm.general_plugins`` entry point (:func:`register`).  What it does:

* Before vLLM reads the model's config (``EngineArgs.create_engine_config``), the source
  is opened and its signature checked; the signed side files vLLM needs (config,
  tokenizer, sentence-transformers pooling config) are checked against their signed
  digests and written to a private temporary directory, which vLLM then uses as the
  model path.  No weight file is ever written there, in any format.
* In the engine process, :class:`WeightguardModelLoader` opens the source again and feeds
  ``model.load_weights`` from :meth:`ModelHandle.iter_tensors`: batches of records read
  once, checked against the signed chunk digests and decrypted (data key from the key
  provider, e.g. OpenBao) in memory; plaintext weights exist only in process memory.
* Any failure (tampered record, wrong signer, key denied, missing side file) raises the
  one typed :mod:`weightguard.errors` error, is audited, and the engine does not start.

Options, in ``model_loader_extra_config`` or else the environment (for pods):

==================  ===============================  ======================================
key                 environment variable             meaning
==================  ===============================  ======================================
source              WEIGHTGUARD_SOURCE               model to load (default: vLLM's model)
trust_key           WEIGHTGUARD_TRUST_KEY            signer public key PEM file(s)
cert_chain          WEIGHTGUARD_CERT_CHAIN           root CA PEM, then intermediates
vault_key           WEIGHTGUARD_VAULT_KEY            trusted Vault Transit signing key
allowed_keys        WEIGHTGUARD_ALLOWED_KEYS         data-key URI patterns (``vault://transit/*``)
audit_log           WEIGHTGUARD_AUDIT_LOG            audit destination (path, ``-``, ``s3://``)
batch_mib           WEIGHTGUARD_BATCH_MIB            weights decrypted at a time (default 256)
unsafe_no_verification  (none: config only)          UNSAFE: do not check who signed
==================  ===============================  ======================================

Lists are JSON lists in the config, comma-separated in the environment.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hmac
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightguard.errors import ConfigError, FormatError, IntegrityError
from weightguard.integrations._side_files import servable_side_file

__all__ = ["LOAD_FORMAT", "Options", "prepare_model_dir", "register"]

LOAD_FORMAT = "weightguard"

_ENV = {
    "source": "WEIGHTGUARD_SOURCE",
    "trust_key": "WEIGHTGUARD_TRUST_KEY",
    "cert_chain": "WEIGHTGUARD_CERT_CHAIN",
    "vault_key": "WEIGHTGUARD_VAULT_KEY",
    "allowed_keys": "WEIGHTGUARD_ALLOWED_KEYS",
    "audit_log": "WEIGHTGUARD_AUDIT_LOG",
    "batch_mib": "WEIGHTGUARD_BATCH_MIB",
}
_CONFIG_ONLY = ("unsafe_no_verification",)

# What vLLM reads besides weights: configs, tokenizers, chat templates.  An allow-list of
# suffixes, so a weight in any other format (.bin, .pt, .onnx ...) never lands on disk.


def _hint() -> str:
    return "set it in --model-loader-extra-config (JSON) or the environment: " + ", ".join(
        f"{k} / {v}" for k, v in _ENV.items() if k != "batch_mib"
    )


def _as_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"weightguard option {key!r} must be a string or a list of strings")


@dataclass(frozen=True)
class Options:
    """The loader's options, from ``model_loader_extra_config`` and then the environment."""

    source: str | None = None
    trust_key: tuple[str, ...] = ()
    cert_chain: tuple[str, ...] = ()
    vault_key: str | None = None
    allowed_keys: tuple[str, ...] = ()
    audit_log: str | None = None
    batch_mib: int = 256
    unsafe_no_verification: bool = False

    @classmethod
    def from_config(
        cls, extra: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
    ) -> Options:
        extra = dict(extra or {})
        env = os.environ if env is None else env
        unknown = sorted(set(extra) - set(_ENV) - set(_CONFIG_ONLY))
        if unknown:
            raise ConfigError(
                f"unknown weightguard option(s) in model_loader_extra_config: {', '.join(unknown)}",
                hint="known: " + ", ".join([*_ENV, *_CONFIG_ONLY]),
            )

        def get(key: str) -> Any:
            value = extra.get(key)
            return env.get(_ENV[key]) if value is None else value

        def one(key: str) -> str | None:
            value = get(key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"weightguard option {key!r} must be a string")
            return value or None

        batch = get("batch_mib")
        try:
            batch_mib = 256 if batch in (None, "") else int(batch)
        except (TypeError, ValueError):
            raise ConfigError(
                f"weightguard option 'batch_mib' is not a number: {batch!r}"
            ) from None
        if batch_mib < 1:
            raise ConfigError("weightguard option 'batch_mib' must be at least 1")
        unsafe = extra.get("unsafe_no_verification", False)
        if not isinstance(unsafe, bool):
            raise ConfigError("weightguard option 'unsafe_no_verification' must be true or false")
        return cls(
            source=one("source"),
            trust_key=_as_list(get("trust_key"), "trust_key"),
            cert_chain=_as_list(get("cert_chain"), "cert_chain"),
            vault_key=one("vault_key"),
            allowed_keys=_as_list(get("allowed_keys"), "allowed_keys"),
            audit_log=one("audit_log"),
            batch_mib=batch_mib,
            unsafe_no_verification=unsafe,
        )

    def policy(self) -> Any:
        from weightguard.policy import trust_policy

        try:
            return trust_policy(
                public_keys=self.trust_key,
                chain=self.cert_chain,
                vault_key=self.vault_key,
                unsafe=self.unsafe_no_verification,
            )
        except ConfigError as exc:
            if not (self.trust_key or self.cert_chain or self.vault_key):
                raise ConfigError(
                    "the weightguard loader needs a trust anchor (trust_key, cert_chain or "
                    "vault_key)",
                    hint=_hint(),
                ) from None
            raise ConfigError(exc.message, hint=_hint()) from None

    def audit(self) -> Any:
        from weightguard.audit import AuditLog

        return AuditLog.open(self.audit_log)

    @contextlib.contextmanager
    def open(self, source: str) -> Iterator[Any]:
        """Open and verify ``source``: a :class:`~weightguard.loader.ModelHandle`."""
        from weightguard.loader import open_model

        audit = self.audit()
        try:
            with open_model(
                source,
                "cpu",
                policy=self.policy(),
                # the one key rule (keys.providers.choose_key_uri): the artifact's key
                # reference is used only if this allow-list admits it
                allowed_keys=self.allowed_keys or None,
                audit=audit,
            ) as handle:
                yield handle
        finally:
            audit.close()


# --------------------------------------------------------------------------- side files


def _servable(name: str) -> bool:
    return servable_side_file(name)


def _side_files(handle: Any, source: str) -> dict[str, bytes]:
    """The signed side files vLLM reads, each checked against its signed digest."""
    names = [n for n in handle.side_files() if _servable(n)]
    if "config.json" not in names:
        raise FormatError(
            f"{source}: the signed model has no config.json, which vLLM needs",
            hint="sign the whole model directory (config and tokenizer files with the weights)",
        )
    return {n: handle.read_side_file(n) for n in names}


def prepare_model_dir(source: str, options: Options, dest: str | os.PathLike[str]) -> list[str]:
    """Verify ``source`` and write its signed side files (never weights) into ``dest``.

    ``dest`` must be an empty directory the caller created (mode 0700).  Returns the names
    written.  On failure nothing is left in ``dest``.
    """
    out = Path(dest)
    with options.open(source) as handle:
        files = _side_files(handle, source)
    written: list[Path] = []
    try:
        for name, data in files.items():
            target = out / name
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            written.append(target)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except BaseException:
        for p in written:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    return sorted(files)


def _check_model_dir(handle: Any, source: str, model_dir: str) -> None:
    """What vLLM read its config from must be exactly the signed side files.

    With :func:`register`'s hook it is the directory weightguard wrote; a user who points
    vLLM at a directory of their own gets it checked here before any weight is loaded.
    """
    signed = _side_files(handle, source)
    root = Path(model_dir)
    if not root.is_dir():
        raise ConfigError(
            f"vLLM's model path {model_dir} is not a directory",
            hint="give the weightguard source as the model, or as 'source' with a directory",
        )
    present = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and servable_side_file(p.relative_to(root).as_posix())
    }

    for name in sorted(present | {"config.json"}):
        want = signed.get(name)
        path = root / name
        if want is None:
            raise IntegrityError(
                "vLLM's model directory holds a file the signature does not cover",
                path=str(path),
                hint="serve from the signed model only",
            )
        got = path.read_bytes() if path.is_file() else b""
        if not hmac.compare_digest(got, want):
            raise IntegrityError("differs from the signed file of the same name", path=str(path))


# --------------------------------------------------------------------------- vLLM hooks


def _private_dir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="weightguard-vllm-", dir=base)
    atexit.register(shutil.rmtree, d, True)
    return d


def _prepare_engine_args(args: Any) -> None:
    """Point vLLM at verified side files before it reads any config."""
    extra = dict(args.model_loader_extra_config or {})
    if extra.get("source") and getattr(args, "_weightguard_dir", None) == args.model:
        return  # already prepared (create_engine_config may run more than once)
    options = Options.from_config(extra)
    source = options.source or str(args.model)
    d = _private_dir()
    try:
        prepare_model_dir(source, options, d)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    if args.tokenizer in (None, args.model):
        args.tokenizer = d
    if not args.served_model_name:
        args.served_model_name = str(args.model)
    extra["source"] = source
    args.model_loader_extra_config = extra
    args.model = d
    args._weightguard_dir = d


def _patch_engine_args() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, "_weightguard", False):
        return

    @functools.wraps(original)
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.load_format == LOAD_FORMAT:
            _prepare_engine_args(self)
        return original(self, *args, **kwargs)

    setattr(create_engine_config, "_weightguard", True)  # noqa: B010
    setattr(EngineArgs, "create_engine_config", create_engine_config)  # noqa: B010


def _loader_class() -> type:
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    class WeightguardModelLoader(BaseModelLoader):
        """Weights from a weightguard source, verified and decrypted as they stream."""

        def __init__(self, load_config: Any) -> None:
            super().__init__(load_config)
            self.options = Options.from_config(load_config.model_loader_extra_config)

        def _source(self, model_config: Any) -> str:
            return self.options.source or str(model_config.model)

        def download_model(self, model_config: Any) -> None:
            with self.options.open(self._source(model_config)):
                pass  # opening verifies the signature and unwraps the keys

        def load_weights(self, model: Any, model_config: Any) -> None:
            source = self._source(model_config)
            with self.options.open(source) as handle:
                _check_model_dir(handle, source, str(model_config.model))
                batch = self.options.batch_mib << 20
                loaded = model.load_weights(handle.iter_tensors(batch_bytes=batch))
            if loaded is not None:
                missing = sorted({n for n, _ in model.named_parameters()} - set(loaded))
                if missing:
                    raise FormatError(
                        f"{source}: the signed model has no weights for "
                        f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""),
                        hint="serve it with the architecture it was released for",
                    )

    return WeightguardModelLoader


def register() -> None:
    """vLLM general plugin: register the ``weightguard`` load format (idempotent)."""
    from vllm.model_executor import model_loader

    registry = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {})
    if getattr(registry.get(LOAD_FORMAT), "__name__", "") != "WeightguardModelLoader":
        model_loader.register_model_loader(LOAD_FORMAT)(_loader_class())
    _patch_engine_args()
