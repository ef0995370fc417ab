"""Opt-in drop-in: code that calls safetensors opens weightguard releases securely.

>>> from weightguard.integrations import safetensors as wg_st
>>> from weightguard.policy import PublicKey
>>> with wg_st.enabled(policy=PublicKey.from_file("release.pub")):
...     model = PeftModel.from_pretrained(base, "adapters/encrypted-lora")   # unmodified code

Off by default: nothing changes until :func:`enable` (or the :func:`enabled` context
manager) is called.  While it is on, ``safetensors.safe_open``,
``safetensors.torch.safe_open`` and ``safetensors.torch.load_file`` (and every
module-level name already bound to them, e.g. ``from safetensors import safe_open`` in
transformers or PEFT) are replaced by versions that route each file:

* a file with a signature (``<file>.sig``, or ``model.sig`` of its directory): opened
  with :func:`weightguard.safe_open` under the caller's policy (signature, coverage,
  signed digests and AEAD tags checked, audited), whether it is encrypted or plain;
* an encrypted artifact without a signature: refused, unless the policy is
  ``UnsafeNoVerification`` (then its AEAD tags still authenticate every record);
* a plain safetensors file without a signature: refused when the policy requires a
  signature (audited ``load.denied``), passed to safetensors unchanged when the policy
  is ``UnsafeNoVerification`` or the caller allowed it (``allow_unsigned_plain=True``).

Trust comes only from the caller (policy, keys, allowed key references); nothing in a
file or an environment variable turns the drop-in on.  :func:`disable` puts back
exactly what was replaced.  The switch is process-wide (every thread).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.signing.location import PRIMARY_SIGNATURE, SIGNATURE_SUFFIX
from weightguard.errors import ConfigError, VerificationError, WeightguardError

if TYPE_CHECKING:
    from weightguard.audit import AuditLog
    from weightguard.lazy import SafeOpen

__all__ = ["disable", "enable", "enabled", "is_enabled"]

_SIG_SUFFIX = SIGNATURE_SUFFIX  # the default signature location has one home
_DIR_SIG = PRIMARY_SIGNATURE


@dataclass
class _Config:
    policy: Any
    data_key: Any = None
    key_options: Mapping[str, Any] | None = None
    allow_key: Iterable[str] | str | None = None
    audit: AuditLog | None = None
    allow_unsigned_plain: bool = False
    workers: int | None = None
    pinned: dict[str, SafeOpen] = field(default_factory=dict)  # realpath -> open handle


@dataclass
class _State:
    config: _Config | None = None
    originals: dict[str, Any] = field(default_factory=dict)
    replaced: list[tuple[Any, str, Any]] = field(default_factory=list)  # (module, name, orig)


_STATE = _State()
_LOCK = threading.RLock()


def is_enabled() -> bool:
    return _STATE.config is not None


@renamed_keywords(key="data_key", allowed_keys="allow_key")
def enable(
    policy: Any,
    *,
    data_key: Any = None,
    key_options: Mapping[str, Any] | None = None,
    allow_key: Iterable[str] | str | None = None,
    audit: AuditLog | None = None,
    allow_unsigned_plain: bool = False,
    workers: int | None = None,
) -> None:
    """Route safetensors' ``safe_open`` / ``load_file`` through weightguard (see above).

    ``policy`` is required (``weightguard.policy``; ``UnsafeNoVerification()`` to accept
    unsigned files); ``data_key``, ``key_options``, ``allow_key`` and ``audit`` are
    :func:`weightguard.safe_open`'s.  Calling it again replaces the settings.
    """
    if policy is None:
        from weightguard.errors import UnsafeOptionRequired

        raise UnsafeOptionRequired(
            "the safetensors drop-in needs a verification policy",
            hint="pass policy=PublicKey.from_file(...) (see weightguard.policy), or "
            "policy=UnsafeNoVerification() to accept unsigned files",
        )
    try:
        import safetensors
        import safetensors.torch
    except ImportError as exc:  # pragma: no cover - safetensors is in the torch extra
        from weightguard.errors import DependencyMissing

        raise DependencyMissing(
            "the safetensors drop-in needs the safetensors package",
            hint="pip install 'weightguard-ml[torch]'",
        ) from exc
    cfg = _Config(
        policy,
        data_key=data_key,
        key_options=key_options,
        allow_key=allow_key,
        audit=audit,
        allow_unsigned_plain=allow_unsigned_plain,
        workers=workers,
    )
    with _LOCK:
        if _STATE.config is None:
            _install(safetensors, safetensors.torch)
        _STATE.config = cfg


def disable() -> None:
    """Put back safetensors' own functions everywhere they were replaced.  Idempotent."""
    with _LOCK:
        for module, name, original in reversed(_STATE.replaced):
            with contextlib.suppress(AttributeError, TypeError):
                if vars(module).get(name) in (_safe_open, _load_file):
                    setattr(module, name, original)
        _STATE.replaced.clear()
        _STATE.originals.clear()
        _STATE.config = None


@contextlib.contextmanager
def enabled(policy: Any, **options: Any) -> Iterator[None]:
    """:func:`enable` for a ``with`` block; the previous state comes back after it."""
    with _LOCK:
        previous = _STATE.config
        enable(policy, **options)
    try:
        yield
    finally:
        with _LOCK:
            if previous is None:
                disable()
            else:
                _STATE.config = previous


@contextlib.contextmanager
def pinned(handle: SafeOpen, names: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """While enabled: serve these file paths from an already verified ``handle``.

    For integrations that verified a model directory once (its side files included) and
    then call a library that opens the weight file by path: the library gets the same
    verified handle, not a second open of the directory.
    """
    cfg = _STATE.config
    if cfg is None:
        raise ConfigError("the safetensors drop-in is not enabled")
    keys = [os.path.realpath(os.fspath(n)) for n in names]
    for k in keys:
        cfg.pinned[k] = handle
    try:
        yield
    finally:
        for k in keys:
            cfg.pinned.pop(k, None)


# --------------------------------------------------------------------------- replacements


def _install(st: Any, st_torch: Any) -> None:
    originals = {"safe_open": st.safe_open, "load_file": st_torch.load_file}
    _STATE.originals = originals
    by_id = {id(originals["safe_open"]): _safe_open, id(originals["load_file"]): _load_file}
    targets = [st, st_torch] + [m for m in list(sys.modules.values()) if m is not None]
    seen: set[int] = set()
    for module in targets:
        mod_name = str(getattr(module, "__name__", ""))
        # weightguard's own modules and safetensors' native module are left alone
        if id(module) in seen or mod_name.startswith(("weightguard", "safetensors._")):
            continue
        seen.add(id(module))
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for name, value in items:
            repl = by_id.get(id(value))
            if repl is None:
                continue
            with contextlib.suppress(AttributeError, TypeError):
                setattr(module, name, repl)
                _STATE.replaced.append((module, name, value))


class _Route:
    """Where one file goes: weightguard (how to open it) or safetensors unchanged."""

    def __init__(self, path: str, cfg: _Config) -> None:
        from weightguard._internal.format import layout as fmt

        self.path = path
        self.cfg = cfg
        self.pinned = cfg.pinned.get(os.path.realpath(path))
        p = Path(path)
        self.source: Path = p
        self.file: str | None = None
        self.plain = False
        if self.pinned is not None:
            return
        try:
            with open(p, "rb") as fh:
                head = fh.read(fmt.MAGIC_PROBE)
        except OSError:
            self.plain = True  # let safetensors report a missing or unreadable file
            return
        artifact = fmt.is_artifact(head)
        if (p.parent / (p.name + _SIG_SUFFIX)).is_file():
            return
        if (p.parent / _DIR_SIG).is_file():
            self.source, self.file = p.parent, p.name
            return
        unsafe = _is_unsafe(cfg.policy)
        if artifact:
            if unsafe:
                return  # AEAD still authenticates each record
            self._refuse(
                f"{path}: encrypted weightguard artifact without a signature "
                f"(looked for {p.name}{_SIG_SUFFIX} and {_DIR_SIG}); the policy requires one"
            )
        if unsafe or cfg.allow_unsigned_plain:
            self.plain = True
            return
        self._refuse(
            f"{path}: plain safetensors file without a signature (looked for "
            f"{p.name}{_SIG_SUFFIX} and {_DIR_SIG}); the policy requires one"
        )

    def _refuse(self, message: str) -> None:
        from weightguard.audit import AuditLog

        exc = VerificationError(
            message,
            hint="sign the model (`weightguard sign`), or enable the drop-in with "
            "allow_unsigned_plain=True (plain files) or UnsafeNoVerification()",
        )
        own = self.cfg.audit is None
        log = AuditLog.from_env() if own else self.cfg.audit
        assert log is not None
        try:
            log.emit(
                "load.denied",
                outcome="denied",
                reason=f"VerificationError: {exc.message}",
                object={"uri": self.path, "device": "cpu", "via": "safetensors drop-in"},
            )
        except WeightguardError:
            pass  # the caller must see the refusal itself
        finally:
            if own:
                log.close()
        raise exc

    def open(self, framework: str, device: str) -> SafeOpen:
        from weightguard.lazy import safe_open

        cfg = self.cfg
        return safe_open(
            self.source,
            framework,
            device,
            policy=cfg.policy,
            data_key=cfg.data_key,
            key_options=cfg.key_options,
            allow_key=cfg.allow_key,
            audit=cfg.audit,
            workers=cfg.workers,
            file=self.file,
        )


def _is_unsafe(policy: Any) -> bool:
    from weightguard.policy import UnsafeNoVerification

    return isinstance(policy, UnsafeNoVerification)


def _config() -> _Config:
    cfg = _STATE.config
    if cfg is None:  # pragma: no cover - replaced functions exist only while enabled
        raise ConfigError("the safetensors drop-in was disabled while in use")
    return cfg


class _PinnedView:
    """A pinned handle as a ``with`` target that does not close it."""

    def __init__(self, handle: SafeOpen) -> None:
        self._h = handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._h, name)

    def __enter__(self) -> SafeOpen:
        return self._h

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None  # its owner closes it


def _safe_open(filename: Any, framework: str = "pt", device: Any = "cpu", **kwargs: Any) -> Any:
    """``safetensors.safe_open`` while the drop-in is on (``backend=`` etc. ignored)."""
    cfg = _config()
    route = _Route(os.fspath(filename), cfg)
    if route.pinned is not None:
        return _PinnedView(route.pinned)
    if route.plain:
        return _STATE.originals["safe_open"](filename, framework, device=device, **kwargs)
    return route.open(framework, str(device))


def _load_file(filename: Any, device: Any = "cpu") -> dict[str, Any]:
    """``safetensors.torch.load_file`` while the drop-in is on."""
    cfg = _config()
    route = _Route(os.fspath(filename), cfg)
    if route.plain:
        return dict(_STATE.originals["load_file"](filename, device=device))
    dev = device if isinstance(device, str) else str(device)
    if isinstance(device, int):
        dev = f"cuda:{device}"
    if route.pinned is not None:
        return _read_all(route.pinned, dev)
    with route.open("pt", dev) as f:
        return _read_all(f, dev)


def _read_all(f: SafeOpen, device: str) -> dict[str, Any]:
    """Every tensor of ``f``: each record read once, in parallel (``get_tensors``)."""
    out = f.get_tensors()
    if device != f.device:
        try:
            out = {k: v.to(device) for k, v in out.items()}
        except BaseException:
            for t in out.values():
                with contextlib.suppress(Exception):
                    t.zero_()
            raise
    return {k: out[k] for k in sorted(out)}
