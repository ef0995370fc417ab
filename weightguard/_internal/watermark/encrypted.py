"""Watermark an encrypted artifact (file or model directory) without plaintext on disk.

The artifact is opened through the secure loader (signature policy, AEAD), every
tensor is marked in memory, each shard is rebuilt as a safetensors file in a
``bytearray`` (its original header bytes, so metadata, tensor order and offsets are
kept exactly; unmarked tensors are byte-identical) and re-encrypted with
``crypt.encrypt_bytes`` under a fresh data key from the SAME key provider URI and
context, same chunk size and header-encryption flag.  Buffers and tensors are zeroed
when done.  Directories are built in a temporary sibling and renamed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightguard._internal.foundation.atomic import atomic_directory, atomic_write
from weightguard._internal.foundation.memory import wipe
from weightguard._internal.signing.location import PRIMARY_SIGNATURE
from weightguard.errors import DestinationError, SourceError, WatermarkError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# A function (name, dtype, shape, tensor) -> marked tensor, or None to keep it.
Mark = Callable[[str, str, tuple[int, ...], "torch.Tensor"], "torch.Tensor | None"]

# The default signature name inside a model directory (its one home: signing.location):
# the copy would no longer match the marked output, so it is not copied.
DIR_SIGNATURE = PRIMARY_SIGNATURE


def _put(buf: bytearray, offset: int, t: torch.Tensor, nbytes: int, name: str) -> None:
    """Copy the raw bytes of ``t`` into ``buf[offset:offset+nbytes]`` (no bytes copy)."""
    import torch

    if nbytes == 0:
        return
    flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
    if flat.numel() != nbytes:
        raise WatermarkError(f"internal: tensor {name!r} has {flat.numel()} bytes, not {nbytes}")
    torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=offset).copy_(flat)


def embed_encrypted(
    src: Path,
    dst: Path,
    mark: Mark,
    *,
    open_model: Callable[..., Any],
    encrypt_bytes: Callable[..., Any],
    load_options: Mapping[str, Any] | None,
    overwrite: bool,
) -> list[str]:
    """Mark the encrypted artifact ``src`` into ``dst``; returns the shards rewritten.

    ``load_options``: ``policy`` (required), ``signature``, ``data_key``, ``key_options``,
    ``audit`` ... as for :func:`weightguard.loader.open_model`.  ``open_model`` and
    ``encrypt_bytes`` are the loader's and crypt's, handed down by weightguard.watermark
    (this layer never imports orchestration modules).
    """
    opts = dict(load_options or {})
    if opts.get("policy") is None:
        raise WatermarkError(
            f"{src} is an encrypted artifact: the secure loader needs a verification policy",
            hint="give the secure loader a verification policy: --trust-key PEM "
            "[--signature BUNDLE], or --unsafe-no-verification",
        )
    key_options = opts.get("key_options")
    with open_model(src, "cpu", **opts) as handle:
        tensors = handle.load()  # verified + decrypted, in memory only
        try:
            # The verified per-file plaintext headers (the loader's parsed, checked view).
            files = list(handle._files)
            written: list[str] = []

            def write(base: Path) -> None:
                for f in files:
                    out = base / f.name if src.is_dir() else base
                    _rebuild(f, tensors, mark, out, key_options, encrypt_bytes)
                    written.append(f.name)

            if src.is_dir():
                shards = {f.name for f in files}
                _build_dir(src, dst, shards, write, overwrite=overwrite)
            else:
                write(dst)
            return written
        finally:
            for t in tensors.values():
                t.zero_()
            tensors.clear()


def _rebuild(
    f: Any,
    tensors: Mapping[str, torch.Tensor],
    mark: Mark,
    out: Path,
    key_options: Mapping[str, Any] | None,
    encrypt_bytes: Callable[..., Any],
) -> None:
    """Rebuild one shard in memory (original header bytes, marked data) and write it:
    re-encrypted like the input when the input shard was encrypted."""
    st_raw: bytes = f.st_raw
    base = len(st_raw)
    size = base + f.geometry.data_size
    buf = bytearray(size)
    try:
        buf[:base] = st_raw
        for info in f.tensors:
            t = tensors[info.name]
            new = mark(info.name, info.dtype, tuple(info.shape), t)
            try:
                _put(buf, base + info.begin, t if new is None else new, info.nbytes, info.name)
            finally:
                if new is not None:
                    new.zero_()
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.encrypted:
            h = f.header
            w = h.wrapped_key
            encrypt_bytes(
                buf,
                out,
                w.uri,
                context=w.context,
                chunk_size=h.chunk_size,
                encrypt_header=h.header_encrypted,
                key_options=key_options,
            )
        else:  # a plain shard next to encrypted ones: it stays plain, as it was
            with atomic_write(out, mode=0o644) as fo:
                fo.write(buf)
    finally:
        wipe(buf)


def _build_dir(
    src: Path,
    dst: Path,
    shards: set[str],
    write: Callable[[Path], None],
    *,
    overwrite: bool,
) -> None:
    """Copy every other file of ``src`` (encrypted or not) byte for byte, let ``write``
    add the rebuilt shards, and make ``dst`` appear complete or not at all."""
    target = dst
    if dst.exists():
        if not overwrite:
            raise DestinationError(
                f"{dst} already exists", hint="choose another output or pass --replace"
            )
        try:
            target = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".new", dir=dst.parent))
            target.rmdir()
        except OSError as exc:
            raise DestinationError(f"cannot create {dst}: {exc.strerror}") from None
    with atomic_directory(target) as tmp:
        for root, dirs, names in os.walk(src):
            dirs.sort()
            for name in sorted(names):
                p = Path(root, name)
                rel = p.relative_to(src).as_posix()
                if rel in shards or rel == DIR_SIGNATURE or not p.is_file():
                    continue
                q = tmp / rel
                q.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(p, q)
                except OSError as exc:
                    raise SourceError(f"cannot copy {p}: {exc.strerror}") from None
        write(tmp)
    if target != dst:
        try:
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
            os.replace(target, dst)
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise DestinationError(f"cannot replace {dst}: {exc.strerror}") from None
