"""Loading a verified model into a ``torch.nn.Module`` (behind ``loader.load_model``).

What a checkpoint holds and what a module expects differ in known ways: checkpoints
may carry the module's non-persistent buffers (``position_ids``: skipped, the module
computes its own), tied parameters appear under one name only, and frameworks build
modules with parameters on ``meta`` to avoid allocating twice.  Everything is decided
from the module and the verified tensor table before a record is read, so a load
that cannot complete (missing tensor, a parameter that would stay on ``meta``) fails
without touching the weights and never reaches ``load.ok``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from weightguard.errors import FormatError

if TYPE_CHECKING:
    import torch

__all__ = ["load_into_module"]


def _non_persistent(module: torch.nn.Module) -> set[str]:
    out: set[str] = set()
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for b in getattr(sub, "_non_persistent_buffers_set", ()):
            out.add(f"{prefix}.{b}" if prefix else b)
    return out


def _aliases(module: torch.nn.Module) -> dict[str, list[str]]:
    """name -> every name of the same tensor object (tied parameters, shared buffers)."""
    by_id: dict[int, list[str]] = defaultdict(list)
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id[id(p)].append(name)
    for name, b in module.named_buffers(remove_duplicate=False):
        by_id[id(b)].append(name)
    return {n: names for names in by_id.values() for n in names}


def _set(module: torch.nn.Module, name: str, value: Any) -> None:
    import torch

    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if isinstance(value, torch.nn.Parameter):
        owner._parameters[attr] = value  # what load_state_dict(assign=True) does
    else:
        owner._buffers[attr] = value


def load_into_module(module: torch.nn.Module, handle: Any, *, strict: bool) -> None:
    """Fill ``module`` from an open :class:`~weightguard.loader.ModelHandle`."""
    import torch

    uri = handle._ctx.uri
    try:
        own = module.state_dict(keep_vars=True)
        skip = _non_persistent(module)
        aliases = _aliases(module)
        ckpt = set(handle.keys())
        loadable = sorted(n for n in ckpt if n in own)
        present = set(loadable)
        unexpected = sorted(ckpt - set(own) - skip)
        missing = sorted(n for n in own if not any(a in present for a in aliases.get(n, [n])))
        if strict and (missing or unexpected):
            raise FormatError(
                f"{uri}: tensors do not match the module "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})",
                hint="load into the right architecture, or pass strict=False",
            )
        infos = {t.name: t for f in handle._files for t in f.tensors}
        mismatched = [
            f"{n} {tuple(infos[n].shape)} vs {tuple(own[n].shape)}"
            for n in loadable
            if tuple(infos[n].shape) != tuple(own[n].shape)
        ]
        if mismatched:
            raise FormatError(
                f"{uri}: tensor shapes do not match the module: {'; '.join(mismatched[:5])}",
                hint="load into the right architecture",
            )
        covered = {a for n in loadable for a in aliases.get(n, [n])}
        on_meta = sorted(
            n
            for n, t in (*module.named_parameters(), *module.named_buffers())
            if t.is_meta and n not in covered
        )
        if on_meta:
            raise FormatError(
                f"{uri}: the load would leave {len(on_meta)} tensor(s) on the meta device "
                f"({', '.join(on_meta[:5])})",
                hint="the checkpoint lacks them: materialise them before loading, or load "
                "the matching checkpoint",
            )
    except FormatError as exc:
        handle._deny(exc, 0.0)
        raise
    by_file: dict[str, list[str]] = defaultdict(list)
    for n in loadable:
        by_file[handle._where[n].name].append(n)
    for file_name in handle.files:  # one file at a time: the extra copy is one shard
        names = by_file.get(file_name)
        if not names:
            continue
        state = handle.load(names)
        try:
            with torch.no_grad():
                for n in names:
                    src, dst = state[n], own[n]
                    if tuple(src.shape) != tuple(dst.shape):
                        raise FormatError(
                            f"{uri}: tensor {n!r} has shape {tuple(src.shape)}, the module "
                            f"expects {tuple(dst.shape)}",
                            hint="load into the right architecture",
                        )
                    if dst.is_meta:
                        value = src if src.dtype == dst.dtype else src.to(dst.dtype)
                        if value is not src:
                            src.zero_()
                        new: Any = (
                            torch.nn.Parameter(value, requires_grad=dst.requires_grad)
                            if isinstance(dst, torch.nn.Parameter)
                            else value
                        )
                        for a in aliases.get(n, [n]):
                            _set(module, a, new)
                        state[n] = None  # the module owns it now: not zeroed below
                    else:
                        dst.copy_(src)
        except BaseException as exc:
            handle._deny(exc, 0.0)
            raise
        finally:
            for t in state.values():
                if t is not None:
                    t.zero_()
            state.clear()
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:  # pragma: no cover - excluded by the check before loading
        raise FormatError(f"{os.fspath(uri)}: tensors left on the meta device: {left[:5]}")
