"""Keyed, post-hoc watermark of model weights with a stated false-positive bound.

    marked = embed(tensors, key)                       # dict in, dict out
    res = embed_file("model.safetensors", "out.safetensors", "file://wm.key")
    rep = check("suspect/", "file://wm.key")           # rep.verdict, rep.z, rep.p
    rep = check("suspect/", key, original="w0/")       # informed: renamed/permuted suspects

Keys: bytes, a path, ``file://PATH``, ``vault-kv://MOUNT/PATH#FIELD`` or
``vault-transit://MOUNT/KEY?context=C&version=N``.  Design and limits: docs/watermark.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from weightguard._internal.foundation.extras import require
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.watermark import scheme as wm_scheme
from weightguard._internal.watermark.scheme import DEFAULT_ALPHA, DEFAULT_MIN_NUMEL, SCHEME
from weightguard.errors import ConfigError, DestinationError, FormatError, WatermarkError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from weightguard._internal.watermark.io import Entry

# The watermark computes on tensors (the `[torch]` extra) with scipy's statistics (the
# `[watermark]` extra, which includes `[torch]`), checked before any work.
_FEATURE, _NEEDS = "the watermark", ("torch", "numpy", "scipy")

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_NUMEL",
    "SCHEME",
    "EmbedResult",
    "WatermarkReport",
    "check",
    "check_keys",
    "commitment_path",
    "embed",
    "embed_file",
    "is_encrypted_input",
    "verify_commitment",
]

COMMIT_LABEL = b"weightguard-wm-commit-v1\x00"


@dataclass(frozen=True)
class WatermarkReport:
    """Outcome of a check.  ``p`` is the bound exp(-z^2/2) on the chance that a model made
    without the key scores this high; ``verdict`` is corrected for ``keys_tested``."""

    verdict: str  # "present" | "inconclusive" | "absent"
    z: float
    p: float
    log10_p: float
    threshold_z: float  # z at which the verdict becomes "present"
    keys_tested: int
    mode: str  # "blind" | "informed"
    tensors: int
    elements: int
    per_tensor: dict[str, float] = field(default_factory=dict)
    alignment: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "z": self.z, "p": self.p, "log10_p": self.log10_p,
            "threshold_z": self.threshold_z, "keys_tested": self.keys_tested,
            "mode": self.mode, "scheme": SCHEME, "tensors": self.tensors,
            "elements": self.elements, "per_tensor": self.per_tensor,
            "alignment": self.alignment, "missing": self.missing,
        }  # fmt: skip


@dataclass(frozen=True)
class EmbedResult:
    output: Path
    commitment: Path | None
    tensors_marked: int
    elements_marked: int
    encrypted: bool = False  # the input was an encrypted artifact, and so is the output


def embed(
    tensors: Mapping[str, torch.Tensor],
    key: Any,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_numel: int = DEFAULT_MIN_NUMEL,
) -> dict[str, torch.Tensor]:
    """Return a new dict with every eligible tensor marked (floating, >= 2 dims, at least
    ``min_numel`` elements); other tensors are returned as the same objects."""
    from weightguard._internal.watermark.io import st_dtype
    from weightguard._internal.watermark.keys import resolve_key

    require(_FEATURE, *_NEEDS, extra="watermark")
    _check_alpha(alpha)
    wk, owned = resolve_key(key)
    try:
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            shape = tuple(t.shape)
            if wm_scheme.is_eligible(
                st_dtype(t.dtype), shape, min_numel=min_numel, for_check=False
            ):
                seed = wm_scheme.tensor_seed(wk.material, name, shape)
                out[name] = wm_scheme.embed_tensor(t.detach(), seed, alpha)
            else:
                out[name] = t
        return out
    finally:
        if owned:
            wk.wipe()


@renamed_keywords(overwrite="replace")
def embed_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    key: Any,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_numel: int = DEFAULT_MIN_NUMEL,
    replace: bool = False,
    write_commitment: bool = True,
    audit: Any = None,
    load_options: Mapping[str, Any] | None = None,
) -> EmbedResult:
    """Mark a safetensors file or a model directory (every shard; other files copied byte
    for byte) into ``dst``, streaming one tensor at a time, with atomic writes.  The
    safetensors headers (and so the metadata) are kept byte for byte.  The key commitment
    goes to ``commitment_path(dst)``, next to the output, never into the model.

    An encrypted artifact (file or directory) is opened through the secure loader with
    ``load_options`` (``{"policy": ..., "signature": ..., "data_key": ...}``, as for
    :func:`check`; a policy is required), marked in memory (the whole model is held in
    RAM), and each shard re-encrypted under a fresh data key from the same key provider
    URI and context, same chunk size and header encryption; no plaintext is written to
    disk.  The output is not covered by the input's signature (a directory's
    ``model.sig`` is not copied): sign it again.  ``EmbedResult.encrypted`` is True."""
    from weightguard._internal.watermark import io as wm_io
    from weightguard._internal.watermark.keys import resolve_key

    require(_FEATURE, *_NEEDS, extra="watermark")
    _check_alpha(alpha)
    srcp, dstp = Path(os.fspath(src)), Path(os.fspath(dst))
    encrypted = _check_embed_paths(srcp, dstp, replace)
    wk, owned = resolve_key(key)
    marker = _Marker(wk, alpha, min_numel)
    try:
        _write_marked(srcp, dstp, marker, encrypted, load_options, replace)
        if marker.tensors == 0:
            _drop_unmarked(srcp, dstp, min_numel)
        cpath = None
        if write_commitment:
            cpath = commitment_path(dstp)
            doc = _commitment_doc(wk.material, wk.ref, alpha, min_numel, dstp, marker.tensors)
            wm_io.write_json_atomic(cpath, doc)
    except BaseException as exc:
        _emit(
            audit,
            "watermark.embed",
            outcome="error",
            reason=type(exc).__name__,
            object={"uri": str(srcp), "output": str(dstp), "key_ref": wk.ref},
        )
        raise
    finally:
        if owned:
            wk.wipe()
    _emit(
        audit,
        "watermark.embed",
        object={"uri": str(srcp), "output": str(dstp), "key_ref": wk.ref},
        tensors=marker.tensors,
        alpha=alpha,
        encrypted=encrypted,
    )
    return EmbedResult(dstp, cpath, marker.tensors, marker.elements, encrypted)


def _check_embed_paths(srcp: Path, dstp: Path, replace: bool) -> bool:
    """Refuse a missing input, an existing output (unless ``replace``) and an output that
    is the input; whether the input is encrypted."""
    if not srcp.exists():
        raise WatermarkError(
            f"{srcp}: no such file or directory",
            hint="pass a safetensors file or a model directory",
        )
    encrypted = is_encrypted_input(srcp)
    if dstp.exists() and not replace:
        raise DestinationError(
            f"{dstp} already exists", hint="choose another output or pass --replace"
        )
    if dstp.resolve() == srcp.resolve():
        raise DestinationError(
            "output and input are the same path", hint="write the marked model to a new location"
        )
    return encrypted


class _Marker:
    """Marks each eligible tensor under one key, counting the tensors and elements marked."""

    def __init__(self, wk: Any, alpha: float, min_numel: int) -> None:
        self.wk, self.alpha, self.min_numel = wk, alpha, min_numel
        self.tensors = 0
        self.elements = 0

    def __call__(self, e: Entry, t: torch.Tensor) -> torch.Tensor | None:
        """``e``: the tensor's :class:`~weightguard._internal.watermark.io.Entry`; None
        keeps the tensor's bytes (not eligible)."""
        if not wm_scheme.is_eligible(e.dtype, e.shape, min_numel=self.min_numel, for_check=False):
            return None
        self.tensors += 1
        self.elements += t.numel()
        seed = wm_scheme.tensor_seed(self.wk.material, e.name, e.shape)
        return wm_scheme.embed_tensor(t, seed, self.alpha)

    def loaded(self, name: str, dtype: str, shape: tuple[int, ...], t: Any) -> Any:
        """The same, for a tensor of an encrypted model (loaded in memory)."""
        from weightguard._internal.watermark import io as wm_io

        return self(wm_io.Entry(name, dtype, shape), t)


def _write_marked(
    srcp: Path,
    dstp: Path,
    marker: _Marker,
    encrypted: bool,
    load_options: Mapping[str, Any] | None,
    replace: bool,
) -> None:
    """Write the marked copy of a file, a model directory or an encrypted artifact."""
    from weightguard._internal.watermark import io as wm_io

    if encrypted:
        from weightguard import crypt, loader
        from weightguard._internal.watermark.encrypted import embed_encrypted

        embed_encrypted(
            srcp,
            dstp,
            marker.loaded,
            open_model=loader.open_model,
            encrypt_bytes=crypt.encrypt_bytes,
            load_options=load_options,
            overwrite=replace,
        )
    elif srcp.is_dir():
        _embed_dir(srcp, dstp, marker)
    else:
        try:
            wm_io.rewrite_file(srcp, dstp, marker)
        except OSError as exc:
            raise DestinationError(f"cannot write {dstp}: {exc.strerror}") from None


def _drop_unmarked(srcp: Path, dstp: Path, min_numel: int) -> NoReturn:
    """Remove an output in which no tensor was marked, and say why."""
    shutil.rmtree(dstp, ignore_errors=True) if dstp.is_dir() else dstp.unlink()
    raise WatermarkError(
        f"{srcp}: no tensor is eligible for the watermark",
        hint=f"tensors need a float dtype, >= 2 dims and >= {min_numel} elements",
    )


def is_encrypted_input(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a weightguard-encrypted file, or a model directory holding at
    least one encrypted ``.safetensors`` shard (headers only are read)."""
    from weightguard._internal.watermark import io as wm_io

    p = Path(os.fspath(path))
    if p.is_dir():
        return any(wm_io._is_encrypted(s) for s in wm_io.shard_files(p))
    return p.is_file() and wm_io._is_encrypted(p)


def _emit(audit: Any, event: str, **fields: Any) -> None:
    if audit is not None:
        audit.emit(event, **fields)


def _embed_dir(srcp: Path, dstp: Path, mark: Any) -> None:
    """Mark every shard of a model directory into a temp dir next to dstp, then rename."""
    from weightguard._internal.watermark import io as wm_io

    try:
        dstp.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dstp.name}.", dir=dstp.parent))
    except OSError as exc:
        raise DestinationError(f"cannot create {dstp}: {exc.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        seen: set[str] = set()
        for s, d in wm_io.copy_tree_files(srcp, tmp):
            with open(s, "rb") as f:
                for e in wm_io.read_st_header(f, s).entries:
                    if e.name in seen:
                        raise WatermarkError(
                            f"{srcp}: tensor {e.name!r} appears in more than one shard",
                            hint="a model must name each tensor once",
                        )
                    seen.add(e.name)
            wm_io.rewrite_file(s, d, mark)
        if dstp.exists():
            shutil.rmtree(dstp) if dstp.is_dir() else dstp.unlink()
        os.replace(tmp, dstp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DestinationError(f"cannot write {dstp}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commitment_path(output: str | os.PathLike[str]) -> Path:
    p = Path(os.fspath(output))
    return p.with_name(p.name + ".wmcommit.json")


def _params(alpha: float, min_numel: int) -> dict[str, Any]:
    return {
        "scheme": SCHEME,
        "alpha": alpha,
        "min_numel": min_numel,
        "domain": wm_scheme.DOMAIN.decode(),
        "seed": "HMAC-SHA256",
        "pattern": "SHAKE-256, LSB-first bits, 1->+1 0->-1, rows = dim 0",
        "dtypes": sorted(wm_scheme.EMBED_DTYPES),
    }


def _digest_outputs(dst: Path) -> dict[str, str]:
    files = [dst] if dst.is_file() else sorted(p for p in dst.rglob("*") if p.is_file())
    out = {}
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[p.name if p == dst else str(p.relative_to(dst))] = h.hexdigest()
    return out


def _commit_value(key: bytes | bytearray, body: Mapping[str, Any]) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    h = hashlib.sha256(COMMIT_LABEL)
    h.update(len(key).to_bytes(4, "little"))
    h.update(key)
    h.update(canon)
    return h.hexdigest()


def _commitment_doc(
    key: bytearray, ref: str, alpha: float, min_numel: int, dst: Path, n: int
) -> dict[str, Any]:
    body = {
        "params": _params(alpha, min_numel),
        "time": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nonce": secrets.token_hex(16),
        "key_ref": ref,
        "outputs_sha256": _digest_outputs(dst),
        "tensors_marked": n,
    }
    return {**body, "commitment": _commit_value(key, body)}


def verify_commitment(path: str | os.PathLike[str], key: Any) -> bool:
    """True when ``key`` is the key committed to in the ``.wmcommit.json`` at ``path``."""
    from weightguard._internal.foundation import boundedjson
    from weightguard._internal.watermark.keys import resolve_key

    try:
        with open(path, "rb") as f:
            raw = f.read((1 << 20) + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read commitment {path}: {exc.strerror}") from None
    doc = boundedjson.loads(
        raw,
        what=f"{path} is not a watermark commitment",
        max_bytes=1 << 20,
        max_depth=8,
        floats=True,
    )
    if not isinstance(doc, dict) or not isinstance(doc.get("commitment"), str):
        raise FormatError(f"{path} is not a watermark commitment (no commitment field)")
    body = {k: v for k, v in doc.items() if k != "commitment"}
    wk, owned = resolve_key(key)
    try:
        return hmac.compare_digest(_commit_value(wk.material, body), doc["commitment"])
    finally:
        if owned:
            wk.wipe()


def check(
    suspect: Any,
    key: Any,
    *,
    original: Any = None,
    keys_tested: int = 1,
    min_numel: int = DEFAULT_MIN_NUMEL,
    load_options: Mapping[str, Any] | None = None,
    audit: Any = None,
) -> WatermarkReport:
    """Test ``suspect`` (dict of tensors, safetensors file, model directory, or encrypted
    artifact opened through the secure loader with ``load_options``) for the mark of
    ``key``.  With ``original`` (the owner's unmarked weights), renamed/reordered tensors
    are re-identified and permuted/rescaled hidden units re-aligned before detection; the
    alignment never sees the key.  ``keys_tested`` is the number of keys the caller tries
    on this suspect (the "present" threshold is corrected for it).  ``audit``: an
    ``AuditLog`` that gets a ``watermark.check`` event."""
    return check_keys(
        suspect,
        [key],
        original=original,
        keys_tested=keys_tested,
        min_numel=min_numel,
        load_options=load_options,
        audit=audit,
    )[0]


def check_keys(
    suspect: Any,
    keys: Sequence[Any],
    *,
    original: Any = None,
    keys_tested: int | None = None,
    min_numel: int = DEFAULT_MIN_NUMEL,
    load_options: Mapping[str, Any] | None = None,
    audit: Any = None,
) -> list[WatermarkReport]:
    """Test ``suspect`` for each of ``keys`` (e.g. one per licensee) in one pass over the
    weights; the threshold is corrected for ``keys_tested`` (default: ``len(keys)``)."""
    from weightguard._internal.watermark import detect as wm_detect
    from weightguard._internal.watermark.io import open_source

    require(_FEATURE, *_NEEDS, extra="watermark")
    k_tested = _keys_tested(keys, keys_tested)
    src = open_source(
        suspect, label="suspect", load_options=load_options, load_encrypted=_load_encrypted
    )
    missing: list[str] = []
    if original is None:
        views = wm_detect.blind_views(src, min_numel)
        mode = "blind"
    else:
        orig = open_source(original, label="original")
        views = wm_detect.informed_views(src, orig, min_numel, missing)
        mode = "informed"
    accs = [wm_detect.Accumulator() for _ in keys]
    notes: dict[str, str] = {}
    refs = _score_keys(keys, views, accs, notes)
    if not accs[0].per_tensor:
        raise WatermarkError(
            f"{src.label}: no tensor to check (float, >= 2 dims, >= {min_numel} elements)",
            hint="is this a model's weights?",
        )
    label = suspect if isinstance(suspect, str | os.PathLike) else "<tensors>"
    reports = []
    for ref, acc in zip(refs, accs, strict=True):
        report = _report(acc, k_tested, mode, notes, missing)
        _emit(
            audit,
            "watermark.check",
            object={"uri": str(label), "key_ref": ref},
            verdict=report.verdict,
            z=round(report.z, 3),
            mode=mode,
            keys_tested=k_tested,
        )
        reports.append(report)
    return reports


def _keys_tested(keys: Sequence[Any], keys_tested: int | None) -> int:
    """The number of keys tried on the suspect (at least the keys given)."""
    if not keys:
        raise ConfigError("no watermark key given")
    k_tested = len(keys) if keys_tested is None else keys_tested
    if k_tested < max(1, len(keys)):
        raise ConfigError(
            f"keys_tested ({k_tested}) is smaller than the keys given ({len(keys)})",
            hint="count every key tried on this suspect",
        )
    return k_tested


def _score_keys(
    keys: Sequence[Any], views: Iterable[Any], accs: list[Any], notes: dict[str, str]
) -> list[str]:
    """Score every view (one tensor at a time) under every key into ``accs``; the keys'
    references (their material is wiped on return)."""
    from weightguard._internal.watermark import detect as wm_detect
    from weightguard._internal.watermark.keys import resolve_key

    resolved: list[tuple[Any, bool]] = []
    try:
        for k in keys:
            resolved.append(resolve_key(k))
        for v in views:  # one tensor at a time, every key
            for (wk, _), acc in zip(resolved, accs, strict=True):
                wm_detect.score(iter([v]), wk.material, acc, notes)
    finally:
        for wk, owned in resolved:
            if owned:
                wk.wipe()
    return [wk.ref for wk, _ in resolved]


def _report(
    acc: Any, k_tested: int, mode: str, notes: dict[str, str], missing: list[str]
) -> WatermarkReport:
    """One key's report from its accumulated scores."""
    z = acc.z
    log10_p = wm_scheme.log10_p_bound(z)
    return WatermarkReport(
        verdict=wm_scheme.verdict_for(z, k_tested),
        z=z,
        p=10.0**log10_p,
        log10_p=log10_p,
        threshold_z=wm_scheme.present_threshold_z(k_tested),
        keys_tested=k_tested,
        mode=mode,
        tensors=len(acc.per_tensor),
        elements=acc.elements,
        per_tensor=acc.per_tensor,
        alignment=notes,
        missing=missing,
    )


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha <= 0.5):
        raise ConfigError(
            f"alpha {alpha} is out of range (0, 0.5]",
            hint=f"the default {DEFAULT_ALPHA} is measured in docs/watermark.md",
        )


def _load_encrypted(path: str, options: Mapping[str, Any]) -> Mapping[str, Any]:
    """The secure loader, for suspects that are encrypted artifacts (decrypted in memory)."""
    from weightguard import loader

    return loader.load_file(path, "cpu", **options)
