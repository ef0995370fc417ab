"""Detection: key-independent canonical views of a suspect (blind, or informed by the
original weights), then keyed correlation.  The canonical views never see a key; only
`correlate_many` / `score` combine them with one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from weightguard._internal.watermark import align as wm_align
from weightguard._internal.watermark import scheme as wm_scheme
from weightguard._internal.watermark.io import TensorSource
from weightguard.errors import WatermarkError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


@dataclass
class CanonTensor:
    name: str  # identity name (the original's name in informed mode)
    shape: tuple[int, ...]  # identity shape
    a: torch.Tensor  # canonical (rows, cols) float32
    note: str = ""  # informed mode: where it came from and how it was aligned


@dataclass
class Accumulator:
    c: float = 0.0
    n: float = 0.0
    elements: int = 0
    per_tensor: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, c: float, n: float, elements: int) -> None:
        self.c += c
        self.n += n
        self.elements += elements
        self.per_tensor[name] = wm_scheme.z_from(c, n)

    @property
    def z(self) -> float:
        return wm_scheme.z_from(self.c, self.n)


def blind_views(source: TensorSource, min_numel: int) -> Iterator[CanonTensor]:
    for name, e in source.entries.items():
        if not wm_scheme.is_eligible(e.dtype, e.shape, min_numel=min_numel, for_check=True):
            continue
        x = wm_align.as_matrix(source.load(name))
        yield CanonTensor(name, e.shape, wm_scheme.canonicalise(x))


def informed_views(
    source: TensorSource, original: TensorSource, min_numel: int, missing: list[str]
) -> Iterator[CanonTensor]:
    names = [
        n
        for n, e in original.entries.items()
        if wm_scheme.is_eligible(e.dtype, e.shape, min_numel=min_numel, for_check=False)
    ]
    if not names:
        raise WatermarkError(
            f"{original.label}: the original has no tensor the watermark marks",
            hint="pass the owner's unmarked weights as --original",
        )
    matches = wm_align.match_tensors(original, source, names)
    for name in names:
        m = matches.get(name)
        if m is None:
            missing.append(name)
            continue
        y = wm_align.as_matrix(original.load(name))
        x = wm_align.as_matrix(source.load(m.suspect_name), transpose=m.transpose)
        if x.shape != y.shape:
            missing.append(name)
            continue
        xa, al = wm_align.align(x, y)
        res = wm_align.descale_residual(xa, y)
        note = (
            f"{m.suspect_name} ({m.how}{', transposed' if m.transpose else ''}; "
            f"{al.kind}, row cos {al.quality:.3f})"
        )
        yield CanonTensor(name, original.entries[name].shape, wm_scheme.canonicalise(res), note)


def score(
    views: Iterator[CanonTensor], key: bytes | bytearray, acc: Accumulator, notes: dict[str, str]
) -> None:
    for v in views:
        seed = wm_scheme.tensor_seed(key, v.name, v.shape)
        c, n = wm_scheme.correlate(v.a, seed)
        acc.add(v.name, c, n, v.a.numel())
        if v.note:
            notes[v.name] = v.note


def correlate_many(views: Sequence[CanonTensor], keys: Sequence[bytes]) -> np.ndarray:
    """Pooled z for each key over materialised canonical views (null-distribution runs).
    Same seed and pattern code as `score`, batched over keys for small tensors."""
    import numpy as np
    import torch

    cs = np.zeros(len(keys), dtype=np.float64)
    n_total = 0.0
    for v in views:
        flat = v.a.reshape(-1)
        n_elem = flat.numel()
        n_total += float(flat.double().pow(2).sum())
        nbytes = (n_elem + 7) // 8
        batch = max(1, (1 << 24) // max(n_elem, 1))
        for k0 in range(0, len(keys), batch):
            ks = keys[k0 : k0 + batch]
            buf = b"".join(
                wm_scheme.pattern_bytes(wm_scheme.tensor_seed(k, v.name, v.shape), n_elem)
                for k in ks
            )
            bits = np.unpackbits(
                np.frombuffer(buf, dtype=np.uint8).reshape(len(ks), nbytes),
                axis=1,
                bitorder="little",
            )[:, :n_elem]
            s = torch.from_numpy(bits).to(torch.float32).mul_(2.0).sub_(1.0)
            cs[k0 : k0 + len(ks)] += (s @ flat).double().numpy()
    return cs / np.sqrt(n_total) if n_total > 0 else cs
