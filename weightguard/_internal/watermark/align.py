"""Key-free alignment of a suspect model onto the owner's original weights.

Nothing in this module receives, derives or looks at a watermark key: the alignment is a
function of (suspect, original) only, so a detector that correlates the aligned residual
with a keyed pattern keeps its p-value bound.  `tests/watermark/test_informed.py` checks
this by signature inspection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightguard._internal.watermark.io import TensorSource
from weightguard._internal.watermark.scheme import CHECK_DTYPES, row_view

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

# largest dimension on which a permutation is searched (the similarity matrix is n x n)
MAX_ASSIGN_DIM = 4096
# mean row cosine above which the suspect is taken as already aligned
IDENTITY_OK = 0.8
DESCRIPTOR_SAMPLE = 1 << 16


@dataclass(frozen=True)
class Match:
    suspect_name: str
    transpose: bool
    how: str  # "name" | "similarity"


@dataclass(frozen=True)
class Alignment:
    kind: str  # "identity" | "rows" | "cols" | "rows+cols"
    quality: float  # mean row cosine between aligned suspect and original
    row_order: np.ndarray | None
    col_order: np.ndarray | None


def as_matrix(t: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """float32 (rows, cols) view; `transpose` swaps a 2-D tensor first."""
    import torch

    x = t.detach().to("cpu", torch.float32)  # one tensor at a time: bounded host memory
    if transpose:
        x = x.reshape(x.shape[0], -1).t()
    rows, cols = row_view(tuple(x.shape))
    return x.reshape(rows, cols).contiguous()


def _unit_rows(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)


def mean_row_cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((_unit_rows(x) * _unit_rows(y)).sum(dim=1).mean())


def assign(sim: torch.Tensor) -> tuple[np.ndarray, float]:
    """Maximum-weight matching on a similarity matrix; returns c with x row i -> y row c[i]
    and the mean matched similarity."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    best = sim.argmax(dim=1)
    if sim.shape[0] == sim.shape[1] and int(best.unique().numel()) == sim.shape[0]:
        # every row's best match is distinct: that permutation is the optimum
        idx = best.numpy()
        return idx.astype(np.int64), float(sim[np.arange(len(idx)), best].mean())
    s = sim.numpy().astype(np.float64, copy=False)
    r, c = linear_sum_assignment(s, maximize=True)
    order = np.empty(s.shape[0], dtype=np.int64)
    order[r] = c
    return order, float(s[r, c].mean())


def _rows_order(x: torch.Tensor, y: torch.Tensor, sorted_features: bool = False) -> np.ndarray:
    import numpy as np
    import torch

    fx, fy = _unit_rows(x), _unit_rows(y)
    if sorted_features:  # invariant to a column permutation
        fx = _unit_rows(torch.sort(fx, dim=1).values - fx.mean(dim=1, keepdim=True))
        fy = _unit_rows(torch.sort(fy, dim=1).values - fy.mean(dim=1, keepdim=True))
    c, _ = assign(fx @ fy.t())
    return np.argsort(c)  # x[order] lines up with y


def align(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Alignment]:
    """Re-order the suspect's rows and/or columns (hidden units) to match the original."""
    rows, cols = y.shape
    q_id = mean_row_cos(x, y)
    best = (q_id, x, Alignment("identity", q_id, None, None))
    if q_id >= IDENTITY_OK or x.shape != y.shape:
        return best[1], best[2]
    # one side permuted (MLP units, attention head dims) is the common case: try rows,
    # then columns, and search both sides only when neither lines up
    if rows <= MAX_ASSIGN_DIM:
        ro = _rows_order(x, y)
        xa = x[ro]
        q = mean_row_cos(xa, y)
        if q > best[0]:
            best = (q, xa, Alignment("rows", q, ro, None))
    if best[0] < IDENTITY_OK and cols <= MAX_ASSIGN_DIM:
        co = _rows_order(x.t(), y.t())
        xa = x[:, co]
        q = mean_row_cos(xa, y)
        if q > best[0]:
            best = (q, xa, Alignment("cols", q, None, co))
    if best[0] < IDENTITY_OK and rows <= MAX_ASSIGN_DIM and cols <= MAX_ASSIGN_DIM:
        r = _rows_order(x, y, sorted_features=True)
        c = _rows_order(x[r].t(), y.t())
        for _ in range(2):
            r = _rows_order(x[:, c], y)
            c = _rows_order(x[r].t(), y.t())
        xa = x[r][:, c]
        q = mean_row_cos(xa, y)
        if q > best[0]:
            best = (q, xa, Alignment("rows+cols", q, r, c))
    return best[1], best[2]


def descale_residual(x: torch.Tensor, y: torch.Tensor, iters: int = 2) -> torch.Tensor:
    """Undo per-row and per-column rescaling (least squares against the original, over the
    suspect's non-zero entries) and return the residual x/scales - y, zero where the
    suspect is zero (pruned entries carry no information about the mark)."""
    import torch

    mask = (x != 0).to(torch.float32)
    xs = x.clone()
    ym = y * mask
    for _ in range(iters):
        d = (xs * ym).sum(dim=1) / (ym * ym).sum(dim=1).clamp_min(1e-30)
        d = torch.where(d.abs() > 1e-6, d, torch.ones_like(d))
        xs /= d[:, None]
        e = (xs * ym).sum(dim=0) / (ym * ym).sum(dim=0).clamp_min(1e-30)
        e = torch.where(e.abs() > 1e-6, e, torch.ones_like(e))
        xs /= e[None, :]
    res = (xs - y) * mask
    return torch.nan_to_num(res, nan=0.0, posinf=0.0, neginf=0.0)


def descriptor(x: torch.Tensor) -> torch.Tensor:
    """Permutation-invariant summary of a tensor: quantiles of its RMS-normalised values,
    of its normalised row norms and column norms, and its log RMS."""
    import torch

    flat = x.reshape(-1)
    if flat.numel() > DESCRIPTOR_SAMPLE:
        flat = flat[:: math.ceil(flat.numel() / DESCRIPTOR_SAMPLE)]
    rms = flat.pow(2).mean().sqrt().clamp_min(1e-30)
    qs = torch.linspace(0.005, 0.995, 64)
    vq = torch.quantile(flat / rms, qs)
    rn = x.pow(2).mean(dim=1).sqrt()
    cn = x.pow(2).mean(dim=0).sqrt()
    q16 = torch.linspace(0.05, 0.95, 16)
    rq = torch.quantile(rn / rn.mean().clamp_min(1e-30), q16)
    cq = torch.quantile(cn / cn.mean().clamp_min(1e-30), q16)
    return torch.cat([vq, rq, cq, rms.log().reshape(1)])


def match_tensors(
    original: TensorSource, suspect: TensorSource, names: Sequence[str]
) -> dict[str, Match]:
    """Map each original tensor name to a suspect tensor: same name and shape first, then
    by shape and descriptor similarity (linear assignment within each shape group)."""
    import numpy as np
    import torch

    out: dict[str, Match] = {}
    used: set[str] = set()
    pending: list[str] = []
    for n in names:
        oe = original.entries[n]
        se = suspect.entries.get(n)
        if se is not None and se.dtype in CHECK_DTYPES:
            if se.shape == oe.shape:
                out[n] = Match(n, False, "name")
                used.add(n)
                continue
            if len(oe.shape) == 2 and se.shape == oe.shape[::-1]:
                out[n] = Match(n, True, "name")
                used.add(n)
                continue
        pending.append(n)
    if not pending:
        return out
    free = [
        e
        for k, e in suspect.entries.items()
        if k not in used and e.dtype in CHECK_DTYPES and len(e.shape) >= 2
    ]
    groups: dict[tuple[int, ...], tuple[list[str], list[str]]] = {}
    for n in pending:
        groups.setdefault(tuple(sorted(original.entries[n].shape)), ([], []))[0].append(n)
    for e in free:
        g = groups.get(tuple(sorted(e.shape)))
        if g is not None:
            g[1].append(e.name)
    for onames, snames in groups.values():
        if not snames:
            continue
        od = torch.stack([descriptor(as_matrix(original.load(n))) for n in onames])
        sds = []
        for sn in snames:
            se = suspect.entries[sn]
            oshape = original.entries[onames[0]].shape
            tr = se.shape != oshape
            sds.append(descriptor(as_matrix(suspect.load(sn), transpose=tr)))
        sd = torch.stack(sds)
        cost = torch.cdist(od, sd).numpy().astype(np.float64)
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(cost)
        for i, j in zip(r, c, strict=True):
            oshape = original.entries[onames[i]].shape
            tr = suspect.entries[snames[j]].shape != oshape
            out[onames[i]] = Match(snames[j], tr, "similarity")
    return out
