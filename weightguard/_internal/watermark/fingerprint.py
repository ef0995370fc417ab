"""Keyless derivation fingerprint: was model B derived from model A?

Per 2-D weight (matched by name, else by shape and descriptor), the rows of B are matched
to the rows of A by linear assignment on cosine similarity.  Two pieces of evidence:

- similarity: the mean cosine of matched rows (high after any permutation when B derives
  from A; low for independently initialised models);
- order: Spearman's rho between the assignment and the identity.  Under the null
  "independently initialised" (the unit order of B carries no information about A's) the
  assignment is a uniformly random permutation, so rho*sqrt(n-1) is approximately N(0,1);
  per-layer one-sided p-values are combined with Fisher's method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from weightguard._internal.foundation.extras import require
from weightguard._internal.watermark import align as wm_align
from weightguard._internal.watermark import scheme as wm_scheme
from weightguard._internal.watermark.io import open_source
from weightguard.errors import WatermarkError

# Calibrated in tests/watermark/test_compare.py against independently initialised and
# trained models of the same architecture (MLPs, and MiniLM vs a fresh BERT init):
# independent pairs give combined log10 p in about [-2, 0] and median similarity <= 0.45;
# derived pairs give log10 p < -100 and similarity > 0.9.
DERIVED_LOG10_P = -6.0
DERIVED_SIMILARITY = 0.75
MIN_UNITS = 16


@dataclass(frozen=True)
class LayerEvidence:
    name: str
    other: str  # B's tensor matched to A's `name`
    axis: str  # "rows" | "cols"
    units: int
    similarity: float
    spearman: float
    log10_p: float


@dataclass(frozen=True)
class FingerprintReport:
    verdict: str  # "derived" | "independent"
    log10_p: float  # Fisher-combined order evidence
    similarity: float  # median over layers of mean matched cosine
    layers: list[LayerEvidence] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "log10_p": self.log10_p,
            "similarity": self.similarity,
            "thresholds": {"log10_p": DERIVED_LOG10_P, "similarity": DERIVED_SIMILARITY},
            "layers": [vars(x) for x in self.layers],
        }


def spearman_identity(order: Any) -> float:
    """Spearman's rho between a permutation and the identity."""
    import numpy as np

    n = len(order)
    d = np.asarray(order, dtype=np.float64) - np.arange(n, dtype=np.float64)
    return float(1.0 - 6.0 * float((d * d).sum()) / (n * (n * n - 1.0)))


def layer_evidence(name: str, other: str, x: Any, y: Any) -> LayerEvidence | None:
    """x: B's tensor in A's layout, y: A's; both (rows, cols) float32."""
    from scipy.stats import norm

    rows, cols = y.shape
    if rows <= wm_align.MAX_ASSIGN_DIM and rows >= MIN_UNITS:
        axis, xa, ya = "rows", x, y
    elif cols <= wm_align.MAX_ASSIGN_DIM and cols >= MIN_UNITS:
        axis, xa, ya = "cols", x.t(), y.t()
    else:
        return None
    sim = wm_align._unit_rows(xa) @ wm_align._unit_rows(ya).t()
    order, mean_sim = wm_align.assign(sim)
    n = len(order)
    rho = spearman_identity(order)
    log10_p = float(norm.logsf(rho * math.sqrt(n - 1))) / math.log(10.0)
    return LayerEvidence(name, other, axis, n, mean_sim, rho, log10_p)


def compare(a: Any, b: Any, *, min_numel: int = wm_scheme.DEFAULT_MIN_NUMEL) -> FingerprintReport:
    require("the fingerprint", "torch", "numpy", "scipy")
    import numpy as np
    from scipy.stats import chi2

    sa = open_source(a, label="A")
    sb = open_source(b, label="B")
    names = [
        n
        for n, e in sa.entries.items()
        if wm_scheme.is_eligible(e.dtype, e.shape, min_numel=min_numel, for_check=False)
    ]
    matches = wm_align.match_tensors(sa, sb, names)
    layers: list[LayerEvidence] = []
    for n in names:
        m = matches.get(n)
        if m is None:
            continue
        y = wm_align.as_matrix(sa.load(n))
        x = wm_align.as_matrix(sb.load(m.suspect_name), transpose=m.transpose)
        if x.shape != y.shape:
            continue
        ev = layer_evidence(n, m.suspect_name, x, y)
        if ev is not None:
            layers.append(ev)
    if not layers:
        raise WatermarkError(
            "no comparable weight tensors between A and B",
            hint="fingerprints compare models of the same architecture",
        )
    ln_p = [x.log10_p * math.log(10.0) for x in layers]
    stat = -2.0 * sum(ln_p)
    k = 2 * len(layers)
    ln_sf = float(chi2.logsf(stat, k))
    if not math.isfinite(ln_sf):  # far tail: sf(x) ~ pdf(x) * 2x / (x - k + 2)
        ln_sf = float(chi2.logpdf(stat, k)) + math.log(2.0 * stat / max(stat - k + 2.0, 1.0))
    log10_p = ln_sf / math.log(10.0)
    similarity = float(np.median([x.similarity for x in layers]))
    derived = log10_p <= DERIVED_LOG10_P or similarity >= DERIVED_SIMILARITY
    return FingerprintReport("derived" if derived else "independent", log10_p, similarity, layers)
