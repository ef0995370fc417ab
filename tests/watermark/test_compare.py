"""Keyless derivation fingerprint, with its threshold calibrated against independently
initialised (and trained) models of the same architecture."""

from __future__ import annotations

import itertools
import math

import torch

from tests.support import watermark as sup
from weightguard import fingerprint as fp
from weightguard._internal.watermark.fingerprint import spearman_identity


def test_spearman_identity() -> None:
    assert spearman_identity(list(range(10))) == 1.0
    assert spearman_identity(list(range(9, -1, -1))) == -1.0


def test_calibration_independent_models_are_independent() -> None:
    """3 independently initialised and trained MLPs (3 pairs) and MiniLM vs a fresh BERT
    init: the thresholds sit far from all of them."""
    models = [sup.trained_mlp(s) for s in range(3)]
    for a, b in itertools.combinations(models, 2):
        rep = fp.compare(a, b)
        assert rep.verdict == "independent"
        assert rep.log10_p > -3 > fp.DERIVED_LOG10_P
        assert rep.similarity < 0.55 < fp.DERIVED_SIMILARITY
        assert all(abs(x.spearman) * math.sqrt(x.units - 1) < 4.5 for x in rep.layers)
    sd = sup.minilm()
    g = torch.Generator().manual_seed(3)
    fresh = {
        k: (
            torch.randn(v.shape, generator=g) * 0.02
            if v.is_floating_point() and v.dim() >= 2
            else v
        )
        for k, v in sd.items()
    }
    rep = fp.compare(sd, fresh)
    assert rep.verdict == "independent" and rep.log10_p > -3 and rep.similarity < 0.3
    assert len(rep.layers) == 39


def test_derived_models_are_derived() -> None:
    a = sup.trained_mlp(0)
    ft = sup.train_mlp(a, steps=40, seed=77)  # fine-tune
    assert sup.mlp_accuracy(ft) > 0.8
    rep = fp.compare(a, ft)
    assert rep.verdict == "derived" and rep.log10_p < -100 and rep.similarity > 0.9
    d = rep.to_dict()
    assert d["verdict"] == "derived" and math.isfinite(d["log10_p"])
    # hidden units permuted: order evidence is gone on that layer, similarity remains
    g = torch.Generator().manual_seed(5)
    p = torch.randperm(256, generator=g)
    pm = dict(a)
    pm["fc1.weight"], pm["fc1.bias"], pm["fc2.weight"] = (
        a["fc1.weight"][p],
        a["fc1.bias"][p],
        a["fc2.weight"][:, p],
    )
    rep = fp.compare(a, pm)
    assert rep.verdict == "derived" and rep.similarity > 0.99
    by = {x.name: x for x in rep.layers}
    assert abs(by["fc1.weight"].spearman) < 0.3 and by["fc1.weight"].similarity > 0.99
    # renamed and reordered
    rep = fp.compare(a, sup.rename_reorder(ft))
    assert rep.verdict == "derived"


def test_minilm_derivatives() -> None:
    sd = sup.minilm()
    for b in (sup.merged_lora(sd), sup.int4_groupwise(sd), sup.permute_rescale_minilm(sd)):
        rep = fp.compare(sd, b)
        assert rep.verdict == "derived" and rep.similarity > 0.9


def test_distilled_student_is_not_derived() -> None:
    """The fingerprint, like the watermark, does not see through distillation."""
    teacher = sup.trained_mlp(0)
    student = sup.train_mlp(sup.init_mlp(321), steps=120, seed=6, targets=teacher)
    assert fp.compare(teacher, student).verdict == "independent"
