"""One call for a transformers model whose config and weights come verified.

>>> from weightguard.integrations.transformers import from_pretrained
>>> model = from_pretrained("s3://models/minilm/", policy=PublicKey.from_file("release.pub"))

The architecture is resolved from the model's ``config.json`` after it was checked
against the signature: the concrete class named in ``architectures`` (a transformers
class, never code from the artifact), else ``auto_class`` (default ``AutoModel``).
The module is built with its parameters on the ``meta`` device and the decrypted
tensors become the parameters (no random init, no second copy).  Plaintext weights
exist only in process memory.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from weightguard.errors import ConfigError, DependencyMissing, FormatError, WeightguardError
from weightguard.integrations._side_files import (
    OPEN_OPTIONS,
    RENAMED_OPTIONS,
    audit_refusal,
    check_policy,
    opened,
    read_config,
    refusals,
)
from weightguard.loader import load_model

if TYPE_CHECKING:
    import torch

__all__ = ["from_pretrained"]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise DependencyMissing(
            "transformers is not installed", hint="pip install transformers"
        ) from None
    return transformers


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Build modules with parameters on ``meta`` and buffers real (``position_ids``).

    What ``accelerate.init_empty_weights(include_buffers=False)`` does, without the
    dependency; process-wide while active, so build one model at a time.
    """
    import torch

    original = torch.nn.Module.register_parameter

    def register(self: torch.nn.Module, name: str, param: Any) -> None:
        original(self, name, param)
        if param is not None and not param.is_meta:  # already meta: keep it (a tie)
            p = self._parameters[name]
            assert p is not None
            self._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def _model_class(tf: Any, config: Any, auto_class: Any, uri: str) -> Any:
    if auto_class is not None:
        return auto_class
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(tf, str(name), None)
        if isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel):
            return cls
        raise FormatError(
            f"{uri}/config.json: architecture {str(name)[:80]!r} is not a transformers model class",
            hint="pass auto_class= (e.g. transformers.AutoModel); code from the artifact "
            "is never run",
        )
    return tf.AutoModel


def build_config(tf: Any, doc: dict[str, Any], uri: str) -> Any:
    """A transformers config object from the verified ``config.json`` dict."""
    doc = dict(doc)
    model_type = doc.pop("model_type", None)
    if not isinstance(model_type, str):
        raise FormatError(f"{uri}/config.json: no model_type")
    try:
        return tf.AutoConfig.for_model(model_type, **doc)
    except (ValueError, KeyError) as exc:
        raise FormatError(
            f"{uri}/config.json: transformers does not know model_type {model_type[:80]!r} "
            f"({str(exc)[:120]})",
            hint="upgrade transformers",
        ) from None


def instantiate(tf: Any, config: Any, cls: Any, dtype: torch.dtype | None) -> Any:
    """The model with parameters on meta (cast to ``dtype``), ready for assignment."""
    with empty_parameters():
        if hasattr(cls, "from_config") and not issubclass(cls, tf.PreTrainedModel):
            model = cls.from_config(config)  # an Auto* class
        else:
            model = cls(config)
    if dtype is not None:
        model.to(dtype)
    return model


def _dtype(value: Any) -> torch.dtype | None:
    import torch

    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        got = getattr(torch, value, None)
        if not isinstance(got, torch.dtype):
            raise ConfigError(f"torch_dtype {value!r} is not a torch dtype")
        return got
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"torch_dtype {value!r} is not a torch dtype")
    return value


def _refuse_disk_offload(device_map: Mapping[str, Any], what: str) -> None:
    """Offloading to ``"disk"`` would put decrypted weights in files: never allowed."""
    on_disk = sorted(str(k) or "<whole model>" for k, v in device_map.items() if v == "disk")
    if on_disk:
        raise ConfigError(
            f"{what} offloads {', '.join(on_disk[:3])} to disk, which would write "
            "plaintext weights to files",
            hint="map every module to a GPU or 'cpu'",
        )


def _plan_device_map(
    accelerate: Any, model: Any, device_map: Any, max_memory: Mapping[Any, Any] | None
) -> dict[str, Any] | None:
    if device_map is None:
        return None
    if device_map != "auto":
        return dict(device_map)
    dm = accelerate.infer_auto_device_map(
        model,
        max_memory=dict(max_memory) if max_memory else None,
        no_split_module_classes=sorted(getattr(model, "_no_split_modules", None) or ()),
    )
    _refuse_disk_offload(dm, "the inferred device_map (raise max_memory)")
    return dict(dm)


def from_pretrained(
    source: str | os.PathLike[str],
    *,
    policy: Any,
    auto_class: Any = None,
    torch_dtype: Any = None,
    dtype: Any = None,
    device: str | None = None,
    device_map: Any = None,
    max_memory: Mapping[Any, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A ready transformers model (``eval()`` mode) from a signed, encrypted model dir.

    ``torch_dtype``/``dtype``: parameter dtype (default: the one ``config.json``
    records, as transformers' ``dtype="auto"``; else torch's default).
    ``device``: where the weights are decrypted to (default ``cpu``).
    ``device_map``: ``"auto"`` or a dict, dispatched with accelerate after the load
    (``max_memory`` goes to ``accelerate.infer_auto_device_map``).  A map that sends
    any module to ``"disk"`` is refused: accelerate would write plaintext weights there.
    Other keyword arguments go to :func:`weightguard.open_model` (``signature``,
    ``data_key``, ``key_options``, ``allow_key``, ``audit``, ``workers``, ``s3``).
    Side files the release encrypted (``--encrypt-other-files``) are decrypted in
    memory under the same key rule as the weights.  Every refusal is a
    :mod:`weightguard.errors` error and is audited.
    """
    tf = _transformers()
    uri = os.fspath(source)
    try:
        accelerate, want = _check_options(
            kwargs, policy, device_map, max_memory, dtype, torch_dtype
        )
    except WeightguardError as exc:
        audit_refusal(kwargs.get("audit"), exc, uri)
        raise
    with (
        opened(source, device or "cpu", policy, kwargs) as (handle, side),
        refusals(handle, uri, "transformers"),
    ):
        doc = read_config(side)
        if want is None:  # like transformers' dtype="auto": the dtype the config records
            with contextlib.suppress(ConfigError):
                want = _dtype(doc.get("dtype") or doc.get("torch_dtype"))
        config = build_config(tf, doc, uri)
        model = instantiate(tf, config, _model_class(tf, config, auto_class, uri), want)
        # Planned on the meta model, so a refused map stops before any weight is decrypted.
        dm = _plan_device_map(accelerate, model, device_map, max_memory)
        load_model(model, handle, policy=policy)
    if device is not None:
        model.to(device)  # buffers built on the CPU follow the parameters
    if dm is not None:
        model = accelerate.dispatch_model(model, device_map=dm)
        model.hf_device_map = dict(dm)  # what transformers' own device_map load sets
    model.eval()
    return model


def _check_options(
    kwargs: dict[str, Any],
    policy: Any,
    device_map: Any,
    max_memory: Mapping[Any, Any] | None,
    dtype: Any,
    torch_dtype: Any,
) -> tuple[Any, torch.dtype | None]:
    """Refuse what from_pretrained does not do, before anything is opened."""
    check_policy(policy)
    if kwargs.pop("trust_remote_code", False):
        raise ConfigError(
            "trust_remote_code is not supported: code shipped with a model is never run",
            hint="use a model class that transformers provides",
        )
    unknown = sorted(set(kwargs) - set(OPEN_OPTIONS) - set(RENAMED_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}",
            hint="known: " + ", ".join(OPEN_OPTIONS),
        )
    if max_memory is not None and device_map != "auto":
        raise ConfigError("max_memory is used only with device_map='auto'")
    accelerate: Any = None
    if device_map is not None:
        if device_map != "auto":
            if not isinstance(device_map, Mapping):
                raise ConfigError(
                    f"device_map must be 'auto' or a dict of module name to device, "
                    f"not {type(device_map).__name__}"
                )
            _refuse_disk_offload(device_map, "device_map")
        try:
            accelerate = importlib.import_module("accelerate")
        except ImportError:
            raise DependencyMissing(
                "device_map needs accelerate", hint="pip install accelerate"
            ) from None
    return accelerate, _dtype(dtype if dtype is not None else torch_dtype)
