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
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any, NamedTuple

from weightguard._internal.foundation.memory import wipe
from weightguard._internal.load.copiers import Copier
from weightguard._internal.load.pipeline import Record
from weightguard._internal.load.plan import plan
from weightguard.errors import FormatError

if TYPE_CHECKING:
    import torch

__all__ = ["ParamCopier", "load_into_module"]


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


class ParamCopier(Copier):
    """Verified plaintext straight into tensors the framework already allocated.

    ``targets[seg]`` lists ``(offset, nbytes, view)``: where each wanted tensor's bytes
    sit in segment ``seg`` and the byte view of its destination.  A record inside one
    tensor is decrypted in place (no copy, no fresh pages: the framework touched them
    already); a record across tensor boundaries goes through the worker's reused slot
    and is scattered, then the slot is zeroed.  ``discard`` zeroes every target.
    """

    def __init__(self, targets: list[list[tuple[int, int, memoryview]]], slot_bytes: int):
        self.device = "cpu"
        self._targets = targets
        self._slot_bytes = max(1, slot_bytes)
        self._slots: dict[int, bytearray] = {}
        self._lock = threading.Lock()

    def allocate(self, sizes: list[int]) -> None:
        return None  # the destinations exist

    def _inside(self, seg: int, off: int, n: int) -> memoryview | None:
        for start, size, view in self._targets[seg]:
            if start <= off and off + n <= start + size:
                return view[off - start : off - start + n]
        return None

    def acquire(self, worker: int, rec: Record, ciphertext: bool = False) -> memoryview:
        seg, off, n = rec.seg, rec.dst_off, rec.dst_len
        direct = self._inside(seg, off, n)
        if direct is not None:
            return direct
        with self._lock:
            slot = self._slots.get(worker)
            if slot is None:
                slot = self._slots[worker] = bytearray(self._slot_bytes)
        return memoryview(slot)[:n]

    def commit(self, worker: int, rec: Record, out: memoryview, cipher: Any = None) -> None:
        seg, off, n = rec.seg, rec.dst_off, rec.dst_len
        if self._inside(seg, off, n) is not None:
            return None  # decrypted in place
        try:
            for start, size, view in self._targets[seg]:
                lo, hi = max(start, off), min(start + size, off + n)
                if lo < hi:
                    view[lo - start : hi - start] = out[lo - off : hi - off]
        finally:
            wipe(out)

    def abandon(self, worker: int, out: memoryview) -> None:
        wipe(out)

    def finish(self) -> list[Any]:
        return []

    def discard(self) -> None:
        for seg in self._targets:
            for _, _, view in seg:
                wipe(view)

    def close(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                wipe(slot)

    def staging_views(self) -> list[memoryview]:
        return [memoryview(b) for b in self._slots.values()]


def _direct_ok(dst: Any, info: Any, device: str) -> bool:
    """Whether ``dst`` can take the stored bytes as they are (same layout)."""
    from weightguard._internal.load.plan import torch_dtype

    try:
        dt = torch_dtype(info.dtype, path="", tensor=info.name)
    except FormatError:
        return False
    return bool(
        device == "cpu"
        and not dst.is_meta
        and dst.device.type == "cpu"
        and dst.dtype == dt
        and dst.is_contiguous()
        and tuple(dst.shape) == tuple(info.shape)
        and info.nbytes > 0
    )


def _load_direct(handle: Any, file: Any, dsts: dict[str, Any]) -> None:
    """Decrypt ``file``'s tensors ``dsts`` (name -> destination) into the destinations."""
    import torch

    from weightguard._internal.load.copiers import _np_view

    records, segments, place = plan(file.geometry, file.tensors, set(dsts))
    targets: list[list[tuple[int, int, memoryview]]] = [[] for _ in segments]
    for name, p in place.items():
        raw = dsts[name].detach().reshape(-1).view(torch.uint8)
        targets[p.seg].append((p.offset, p.info.nbytes, _np_view(raw)))
    for t in targets:
        t.sort(key=lambda x: x[0])
    job = file.job(records, segments)
    slot = max((r.dst_len for r in records), default=1)
    with torch.no_grad():
        handle._run([job], segments, ParamCopier(targets, slot))


class _Fit(NamedTuple):
    """How a checkpoint maps onto a module, decided before a record is read."""

    own: dict[str, Any]  # the module's tensors by state-dict name
    aliases: dict[str, list[str]]  # name -> every name of the same tensor object
    infos: dict[str, Any]  # the checkpoint's tensor table by name
    loadable: list[str]  # the checkpoint's tensors the module has, sorted


def _check_names(uri: Any, module: torch.nn.Module, fit: _Fit, ckpt: set[str]) -> None:
    """Refuse a checkpoint whose tensor names do not match the module (``strict``)."""
    present = set(fit.loadable)
    unexpected = sorted(ckpt - set(fit.own) - _non_persistent(module))
    missing = sorted(n for n in fit.own if not any(a in present for a in fit.aliases.get(n, [n])))
    if missing or unexpected:
        raise FormatError(
            f"{uri}: tensors do not match the module "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})",
            hint="load into the right architecture, or pass strict=False",
        )


def _check_shapes(uri: Any, fit: _Fit) -> None:
    """Refuse a checkpoint whose tensors have other shapes than the module's."""
    mismatched = [
        f"{n} {tuple(fit.infos[n].shape)} vs {tuple(fit.own[n].shape)}"
        for n in fit.loadable
        if tuple(fit.infos[n].shape) != tuple(fit.own[n].shape)
    ]
    if mismatched:
        raise FormatError(
            f"{uri}: tensor shapes do not match the module: {'; '.join(mismatched[:5])}",
            hint="load into the right architecture",
        )


def _check_meta(uri: Any, module: torch.nn.Module, fit: _Fit) -> None:
    """Refuse a load that would leave a parameter or buffer on the meta device."""
    covered = {a for n in fit.loadable for a in fit.aliases.get(n, [n])}
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


def _fit(module: torch.nn.Module, handle: Any, *, strict: bool) -> _Fit:
    """Match the checkpoint to the module; FormatError when the load cannot complete."""
    uri = handle._ctx.uri
    own = module.state_dict(keep_vars=True)
    ckpt = set(handle.keys())
    fit = _Fit(
        own=own,
        aliases=_aliases(module),
        infos={t.name: t for f in handle._files for t in f.tensors},
        loadable=sorted(n for n in ckpt if n in own),
    )
    if strict:
        _check_names(uri, module, fit, ckpt)
    _check_shapes(uri, fit)
    _check_meta(uri, module, fit)
    return fit


def _assign(
    module: torch.nn.Module, handle: Any, fit: _Fit, names: list[str], state: dict[str, Any]
) -> None:
    """Put the loaded tensors ``state[name]`` into the module: copied into allocated
    tensors, taken over (cast if needed) by tensors on ``meta``."""
    import torch

    uri = handle._ctx.uri
    for n in names:
        src, dst = state[n], fit.own[n]
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
            for a in fit.aliases.get(n, [n]):
                _set(module, a, new)
            state[n] = None  # the module owns it now: not zeroed below
        else:
            dst.copy_(src)


def _load_file(
    module: torch.nn.Module, handle: Any, fit: _Fit, file: Any, names: list[str]
) -> None:
    """Load one file's tensors ``names``: straight into the module's tensors where the
    layout allows, through :meth:`ModelHandle.load` otherwise (zeroed after use)."""
    import torch

    own, infos = fit.own, fit.infos
    direct = {n: own[n] for n in names if _direct_ok(own[n], infos[n], handle.device)}
    if file.streamed and len(direct) < len(names):
        direct = {}  # whole-file digests: one load (one read) for the whole file
    if direct:
        _load_direct(handle, file, direct)
    names = [n for n in names if n not in direct]
    if not names:
        return
    state = handle.load(names)
    try:
        with torch.no_grad():
            _assign(module, handle, fit, names, state)
    except BaseException as exc:
        handle._deny(exc, 0.0)
        raise
    finally:
        for t in state.values():
            if t is not None:
                t.zero_()
        state.clear()


def _zero_loaded(module: torch.nn.Module, fit: _Fit) -> None:
    """Fail closed: no half-loaded module keeps weights."""
    import torch

    now = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    with torch.no_grad():
        for n in fit.loadable:
            for t in (fit.own[n], now.get(n)):
                if t is not None and not t.is_meta:
                    t.zero_()


def load_into_module(module: torch.nn.Module, handle: Any, *, strict: bool) -> None:
    """Fill ``module`` from an open :class:`~weightguard.loader.ModelHandle`."""
    try:
        fit = _fit(module, handle, strict=strict)
    except FormatError as exc:
        handle._deny(exc, 0.0)
        raise
    by_file: dict[str, list[str]] = defaultdict(list)
    for n in fit.loadable:
        by_file[handle._where[n].name].append(n)
    try:
        for f in handle._files:  # one file at a time: any extra copy is one shard
            if by_file.get(f.name):
                _load_file(module, handle, fit, f, by_file[f.name])
    except BaseException:
        _zero_loaded(module, fit)
        raise
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:  # pragma: no cover - excluded by the check before loading
        raise FormatError(
            f"{os.fspath(handle._ctx.uri)}: tensors left on the meta device: {left[:5]}"
        )
