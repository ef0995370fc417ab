"""One call for a PEFT adapter (LoRA ...) whose config and weights come verified.

>>> from weightguard.integrations.peft import from_pretrained
>>> model = from_pretrained(base_model, "releases/lora-adapter",
...                         policy=PublicKey.from_file("release.pub"))

The adapter directory (``adapter_config.json``, ``adapter_model.safetensors``, usually
encrypted, and ``model.sig``) is opened once with :func:`weightguard.safe_open`: the
signature and policy are checked, ``adapter_config.json`` is read and checked against
its signed digest before PEFT sees it, and PEFT's own ``PeftModel.from_pretrained``
then loads the weights through the safetensors drop-in
(:mod:`weightguard.integrations.safetensors`), pinned to that same verified handle.
Plain ``PeftModel.from_pretrained`` under ``integrations.safetensors.enabled(...)`` works
too, but then PEFT reads ``adapter_config.json`` itself, unverified.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard.errors import DependencyMissing, FormatError

if TYPE_CHECKING:
    from weightguard.audit import AuditLog

__all__ = ["from_pretrained"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@renamed_keywords(key="data_key", allowed_keys="allow_key")
def from_pretrained(
    model: Any,
    source: str | os.PathLike[str],
    *,
    policy: Any,
    adapter_name: str = "default",
    is_trainable: bool = False,
    data_key: Any = None,
    key_options: Mapping[str, Any] | None = None,
    allow_key: Iterable[str] | str | None = None,
    audit: AuditLog | None = None,
    **peft_kwargs: Any,
) -> Any:
    """``PeftModel.from_pretrained(model, source, ...)`` with a verified adapter directory.

    ``policy``, ``data_key``, ``key_options``, ``allow_key`` and ``audit`` are
    :func:`weightguard.safe_open`'s; ``peft_kwargs`` go to PEFT.
    """
    try:
        from peft import PeftConfig, PeftModel
    except ImportError as exc:
        raise DependencyMissing(
            "loading a PEFT adapter needs the peft package", hint="pip install peft"
        ) from exc
    from weightguard.integrations import safetensors as dropin
    from weightguard.integrations._side_files import SideFiles
    from weightguard.lazy import safe_open

    src = os.fspath(source)
    with safe_open(
        src,
        policy=policy,
        data_key=data_key,
        key_options=key_options,
        allow_key=allow_key,
        audit=audit,
        file=WEIGHTS_NAME,
    ) as f:
        # checked against the signature, and decrypted in memory when the release
        # encrypted it (encrypt --encrypt-other-files)
        raw = SideFiles(
            f.handle,
            src,
            data_key=data_key,
            key_options=key_options,
            allow_key=allow_key,
            audit=audit,
        ).read(CONFIG_NAME)
        try:
            cfg = json.loads(raw)
            if not isinstance(cfg, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{src}/{CONFIG_NAME}: not a PEFT adapter config ({exc})") from None
        cfg.pop("runtime_config", None)
        config = PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**cfg))
        with (
            dropin.enabled(
                policy,
                data_key=data_key,
                key_options=key_options,
                allow_key=allow_key,
                audit=audit,
            ),
            dropin.pinned(f, [os.path.join(src, WEIGHTS_NAME)]),
        ):
            return PeftModel.from_pretrained(
                model,
                src,
                adapter_name=adapter_name,
                is_trainable=is_trainable,
                config=config,
                **peft_kwargs,
            )
