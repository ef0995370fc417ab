"""Keyless derivation evidence: was model B derived from model A?

    rep = compare("a/", "b.safetensors")   # rep.verdict: "derived" | "independent"
    rep.log10_p      # Fisher-combined permutation-test p-value (order of units kept)
    rep.similarity   # median per-layer row similarity after alignment (survives permutation)

Method and calibration: docs/watermark.md ("Fingerprint").
"""

from __future__ import annotations

from weightguard._internal.watermark.fingerprint import (
    DERIVED_LOG10_P,
    DERIVED_SIMILARITY,
    FingerprintReport,
    LayerEvidence,
    compare,
)

__all__ = [
    "DERIVED_LOG10_P",
    "DERIVED_SIMILARITY",
    "FingerprintReport",
    "LayerEvidence",
    "compare",
]
