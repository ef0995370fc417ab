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

Options, in ``model_loader_extra_config`` or else the environment (for pods); the names
are the integrations' one vocabulary (:mod:`weightguard.integrations._settings`, the same
as the KServe initializer's):

=======================  ===============================  ================================
key                      environment variable             meaning
=======================  ===============================  ================================
source                   WEIGHTGUARD_SOURCE               model to load (default: vLLM's)
trust_key                WEIGHTGUARD_TRUST_KEY            signer public key PEM file(s)
trust_chain              WEIGHTGUARD_TRUST_CHAIN          root CA PEM, then intermediates
trust_vault_key          WEIGHTGUARD_TRUST_VAULT_KEY      trusted Vault Transit signing key
trust_identity           WEIGHTGUARD_TRUST_IDENTITY       Sigstore certificate identity
trust_issuer             WEIGHTGUARD_TRUST_ISSUER         Sigstore OIDC issuer
trust_root               WEIGHTGUARD_TRUST_ROOT           Sigstore trusted_root.json
allow_key                WEIGHTGUARD_ALLOW_KEY            data-key URI patterns
audit_log                WEIGHTGUARD_AUDIT_LOG            audit destination (path, -, s3://)
batch_mib                WEIGHTGUARD_BATCH_MIB            weights decrypted at a time (256)
unsafe_no_verification   (none: config only)              UNSAFE: do not check who signed
=======================  ===============================  ================================

Lists are JSON lists in the config, comma-separated in the environment.  The previous
release's ``cert_chain`` / ``vault_key`` (``WEIGHTGUARD_CERT_CHAIN``,
``WEIGHTGUARD_VAULT_KEY``) are still read, with a deprecation warning.

What vLLM reads is what was signed: the model directory vLLM is given is the private one
holding the verified side files (decrypted when the release encrypted them with
``--encrypt-other-files``); ``trust_remote_code``, a separate ``--tokenizer``,
``--hf-config-path`` or a ``--generation-config`` directory (files the signature does not
cover) are refused; and before any weight is loaded every file in the directory vLLM
uses, dot-files and ``*.py`` included, is compared with the signed contents.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hmac
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.signing.location import PRIMARY_SIGNATURE
from weightguard.errors import ConfigError, FormatError, IntegrityError, WeightguardError
from weightguard.integrations import _settings
from weightguard.integrations._side_files import (
    SideFiles,
    audit_refusal,
    refusals,
)

__all__ = ["LOAD_FORMAT", "Options", "prepare_model_dir", "register"]

LOAD_FORMAT = "weightguard"

_KEYS = (
    "source",
    *_settings.TRUST,
    "allow_key",
    "audit_log",
    "batch_mib",
)
_ENV = {k: _settings.env_name(k) for k in _KEYS}
_CONFIG_ONLY = ("unsafe_no_verification",)
_SIGNATURE = PRIMARY_SIGNATURE  # the default signature location has one home
# How a hint names a setting here: the config key and its variable.
_NAMES = {k: f"{k} / {_ENV[k]}" for k in (*_settings.TRUST, "allow_key", "audit_log")}


def _hint() -> str:
    return "set it in --model-loader-extra-config (JSON) or the environment: " + ", ".join(
        f"{k} / {v}" for k, v in _ENV.items() if k != "batch_mib"
    )


@dataclass(frozen=True)
class Options:
    """The loader's options, from ``model_loader_extra_config`` and then the environment."""

    source: str | None = None
    trust_key: tuple[str, ...] = ()
    trust_chain: tuple[str, ...] = ()
    trust_vault_key: str | None = None
    trust_identity: str | None = None
    trust_issuer: str | None = None
    trust_root: str | None = None
    allow_key: tuple[str, ...] = ()
    audit_log: str | None = None
    batch_mib: int = 256
    unsafe_no_verification: bool = False

    @classmethod
    def from_config(
        cls, extra: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
    ) -> Options:
        extra = dict(extra or {})
        env = os.environ if env is None else env
        unknown = sorted(set(extra) - set(_KEYS) - set(_CONFIG_ONLY) - set(_settings.RENAMED))
        if unknown:
            raise ConfigError(
                f"unknown weightguard option(s) in model_loader_extra_config: {', '.join(unknown)}",
                hint="known: " + ", ".join([*_KEYS, *_CONFIG_ONLY]),
            )

        def get(key: str) -> Any:
            return _settings.lookup(extra, env, key)

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
            trust_key=_settings.as_list(get("trust_key"), "trust_key"),
            trust_chain=_settings.as_list(get("trust_chain"), "trust_chain"),
            trust_vault_key=one("trust_vault_key"),
            trust_identity=one("trust_identity"),
            trust_issuer=one("trust_issuer"),
            trust_root=one("trust_root"),
            allow_key=_settings.as_list(get("allow_key"), "allow_key"),
            audit_log=one("audit_log"),
            batch_mib=batch_mib,
            unsafe_no_verification=unsafe,
        )

    def policy(self) -> Any:
        anchors = {k: getattr(self, k) for k in _settings.TRUST}
        try:
            return _settings.policy_from(anchors, unsafe=self.unsafe_no_verification)
        except ConfigError as exc:
            if not any(anchors.values()) and not self.unsafe_no_verification:
                raise ConfigError(
                    "the weightguard loader needs a trust anchor (trust_key, trust_chain, "
                    "trust_vault_key or trust_identity with trust_issuer)",
                    hint=_hint(),
                ) from None
            raise ConfigError(exc.message, hint=_hint()) from None

    def audit(self) -> Any:
        from weightguard.audit import AuditLog

        return AuditLog.open(self.audit_log)

    @contextlib.contextmanager
    def open(self, source: str) -> Iterator[tuple[Any, SideFiles]]:
        """Open and verify ``source``: its :class:`~weightguard.loader.ModelHandle` and
        :class:`SideFiles`.  Every error in the block is a weightguard error, audited
        once, its hint in this loader's words (its options, never a CLI flag)."""
        from weightguard.loader import open_model

        audit = self.audit()
        try:
            with open_model(
                source,
                "cpu",
                policy=self.policy(),
                # the one key rule (keys.providers.choose_key_uri): the artifact's key
                # reference is used only if this allow-list admits it
                allow_key=self.allow_key or None,
                audit=audit,
            ) as handle:
                side = SideFiles(handle, source, allow_key=self.allow_key or None, audit=audit)
                with refusals(handle, source, "vLLM"):
                    yield handle, side
        except WeightguardError as exc:
            _retold(exc)  # in place: its cause stays chained
            raise
        finally:
            audit.close()


# Options(allowed_keys=...), the previous release's spelling: until the next one, warned
Options.__init__ = renamed_keywords(allowed_keys="allow_key")(Options.__init__)  # type: ignore[method-assign]


def _retold(exc: WeightguardError) -> WeightguardError:
    return _settings.retold(exc, _NAMES, _hint())


def _refused(exc: WeightguardError, options: Options | None, source: str) -> None:
    """Audit a refusal raised before the model was opened (once)."""
    if getattr(exc, "_weightguard_audited", False):
        return
    audit = None
    with contextlib.suppress(WeightguardError):
        audit = options.audit() if options is not None else None
    try:
        audit_refusal(audit, exc, source)
    finally:
        if audit is not None:
            audit.close()


# --------------------------------------------------------------------------- side files


def _side_files(side: SideFiles, source: str) -> dict[str, bytes]:
    """The signed side files vLLM reads, each checked against its signed digest and
    decrypted when the release encrypted it."""
    names = side.names()
    if "config.json" not in names:
        raise FormatError(
            f"{source}: the signed model has no config.json, which vLLM needs",
            hint="sign the whole model directory (config and tokenizer files with the weights)",
        )
    return side.read_many(names)


def prepare_model_dir(source: str, options: Options, dest: str | os.PathLike[str]) -> list[str]:
    """Verify ``source`` and write its signed side files (never weights) into ``dest``.

    ``dest`` must be an empty directory the caller created (mode 0700).  Returns the names
    written.  On failure nothing is left in ``dest``.
    """
    out = Path(dest)
    with options.open(source) as (_, side):
        files = _side_files(side, source)
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


def _files_under(root: Path) -> list[str]:
    """Every entry vLLM could read under ``root`` (dot-files included), relative; a link
    to a directory is refused (what it holds is not this directory's)."""
    found: list[str] = []
    for top, dirs, files in os.walk(root):
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                raise IntegrityError(
                    "vLLM's model directory holds a link to a directory",
                    path=os.path.join(top, d),
                    hint="serve from the signed model only",
                )
        found += [os.path.relpath(os.path.join(top, f), root) for f in files]
    return sorted(p.replace(os.sep, "/") for p in found)


def _check_model_dir(handle: Any, side: SideFiles, source: str, model_dir: str) -> None:
    """What vLLM reads must be exactly what was signed.

    With :func:`register`'s hook the model directory is the private one weightguard
    wrote; a user who points vLLM at a directory of their own gets it checked here,
    before any weight is loaded: every file in it (dot-files, ``*.py`` and other
    names included) must be a signed file whose contents equal the signed ones (as
    stored, or as decrypted), the signature itself, or, only when the directory is the
    source itself, one of the weight files weightguard streams and verifies.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ConfigError(
            f"vLLM's model path {model_dir} is not a directory",
            hint="give the weightguard source as the model, or as 'source' with a directory",
        )
    is_source = os.path.isdir(source) and os.path.realpath(source) == os.path.realpath(root)
    signed = set(handle.side_files())
    differ: dict[str, bytes] = {}
    for name in sorted(set(_files_under(root)) | {"config.json"}):
        path = root / name
        if name == _SIGNATURE:
            continue  # the signature itself (vLLM does not read it)
        if name in handle.files:
            if is_source:
                continue  # the weights: streamed from here and verified record by record
            raise IntegrityError(
                "vLLM's model directory holds weight files; with --load-format "
                "weightguard the weights come from the source",
                path=str(path),
                hint="give the weightguard source as the model, or serve from an empty directory",
            )
        if name not in signed:
            raise IntegrityError(
                "vLLM's model directory holds a file the signature does not cover",
                path=str(path),
                hint="serve from the signed model only",
            )
        try:
            st = os.stat(path)  # follows a link to a file: what vLLM would read
            got = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        except FileNotFoundError:
            got = b""
        if not hmac.compare_digest(got, side.stored(name)):
            differ[name] = got  # as released: no; as decrypted (one unwrap for all)?
    plain = side.read_many(differ)
    for name, got in differ.items():
        if not hmac.compare_digest(got, plain[name]):
            raise IntegrityError(
                "differs from the signed file of the same name", path=str(root / name)
            )


# --------------------------------------------------------------------------- vLLM hooks


def _private_dir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="weightguard-vllm-", dir=base)
    atexit.register(shutil.rmtree, d, True)
    return d


def _refuse_unsigned_inputs(args: Any, source: str) -> None:
    """vLLM options that would make it read code or files the signature does not cover."""
    if getattr(args, "trust_remote_code", False):
        raise ConfigError(
            "trust_remote_code is not supported with --load-format weightguard: code "
            "shipped with a model is never run",
            hint="drop --trust-remote-code; serve an architecture vLLM implements",
        )
    same = (None, "", str(args.model), source)
    for flag, attr in (("--tokenizer", "tokenizer"), ("--hf-config-path", "hf_config_path")):
        value = getattr(args, attr, None)
        if value not in same:
            raise ConfigError(
                f"{flag} {str(value)[:200]!r} is not the weightguard source: vLLM would "
                "read files the signature does not cover",
                hint=f"drop {flag}; sign the tokenizer and config files with the model",
            )
    gen = getattr(args, "generation_config", "auto")
    if gen not in ("auto", "vllm", *same):
        raise ConfigError(
            f"--generation-config {str(gen)[:200]!r} is a directory the signature does not cover",
            hint="use 'auto' (the signed generation_config.json) or 'vllm'",
        )


def _prepare_engine_args(args: Any) -> None:
    """Point vLLM at verified side files before it reads any config."""
    extra = dict(args.model_loader_extra_config or {})
    if extra.get("source") and getattr(args, "_weightguard_dir", None) == args.model:
        return  # already prepared (create_engine_config may run more than once)
    options: Options | None = None
    source = str(extra.get("source") or args.model)
    try:
        options = Options.from_config(extra)
        source = options.source or str(args.model)
        _refuse_unsigned_inputs(args, source)
        d = _private_dir()
        try:
            prepare_model_dir(source, options, d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
    except WeightguardError as exc:
        _refused(exc, options, source)
        _retold(exc)
        raise
    args.tokenizer = d
    if getattr(args, "hf_config_path", None):
        args.hf_config_path = d
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


def _check_engine_config(model_config: Any) -> None:
    """In the engine process: the same refusals, on the config vLLM actually uses."""
    if getattr(model_config, "trust_remote_code", False):
        raise ConfigError(
            "trust_remote_code is not supported with --load-format weightguard: code "
            "shipped with a model is never run",
            hint="drop --trust-remote-code; serve an architecture vLLM implements",
        )
    tokenizer = getattr(model_config, "tokenizer", None)
    if tokenizer not in (None, "", str(model_config.model)):
        raise ConfigError(
            f"vLLM's tokenizer path {str(tokenizer)[:200]!r} is not the verified model "
            "directory: vLLM would read files the signature does not cover",
            hint="drop --tokenizer; sign the tokenizer files with the model",
        )


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

        def weights(self, handle: Any, model: Any) -> Iterator[tuple[str, Any]]:
            """The ``(name, tensor)`` stream ``model.load_weights`` takes: every tensor,
            a batch of ``batch_mib`` at a time.  The seam for partial reads (e.g. only
            this tensor-parallel rank's slices): override or replace this."""
            return handle.iter_tensors(batch_bytes=self.options.batch_mib << 20)

        def load_weights(self, model: Any, model_config: Any) -> None:
            source = self._source(model_config)
            try:
                _check_engine_config(model_config)
            except WeightguardError as exc:
                _refused(exc, self.options, source)
                _retold(exc)  # in place: its cause stays chained
                raise
            with self.options.open(source) as (handle, side):
                _check_model_dir(handle, side, source, str(model_config.model))
                ranks = _rank_reader(handle)  # tensor parallel: this rank's rows only
                try:
                    stream = (
                        ranks.lazy_tensors() if ranks is not None else self.weights(handle, model)
                    )
                    loaded = model.load_weights(stream)
                finally:
                    if ranks is not None:
                        ranks.close()  # audits the bytes decrypted on this rank
                if loaded is not None:
                    missing = sorted({n for n, _ in model.named_parameters()} - set(loaded))
                    if missing:
                        raise FormatError(
                            f"{source}: the signed model has no weights for "
                            f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""),
                            hint="serve it with the architecture it was released for",
                        )

    return WeightguardModelLoader


def _rank_reader(handle: Any) -> Any:
    """Under tensor parallelism, lazy tensors whose ``narrow(0, ...)`` (vLLM's column- and
    vocab-parallel loaders) reads only this rank's records; None otherwise.  See
    docs/lazy.md ("Tensor-parallel reads")."""
    try:
        from vllm.distributed import get_tensor_model_parallel_world_size

        tp = int(get_tensor_model_parallel_world_size())
    except (ImportError, AssertionError, RuntimeError):  # no tensor-parallel group
        return None
    if tp <= 1:
        return None
    from weightguard.lazy import SafeOpen

    return SafeOpen.over(handle)


def register() -> None:
    """vLLM general plugin: register the ``weightguard`` load format (idempotent)."""
    from vllm.model_executor import model_loader

    registry = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {})
    if getattr(registry.get(LOAD_FORMAT), "__name__", "") != "WeightguardModelLoader":
        model_loader.register_model_loader(LOAD_FORMAT)(_loader_class())
    _patch_engine_args()
    from weightguard.integrations import vllm_lora

    vllm_lora.register()  # LoRA adapters released with weightguard: verified in the worker
