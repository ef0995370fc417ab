"""Null distribution: for models made without the key, z stays under the Hoeffding bound
P(z >= t) <= exp(-t^2/2), and nothing innocent is called "present".

Short versions here; the long runs (>= 1000 keys over the whole MiniLM, 10^5+ keys over
several of its full tensors) are in benchmarks/watermark_null.py.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from tests.support.watermark import finetune_minilm, minilm, train_mlp, trained_mlp
from weightguard import watermark as wm
from weightguard._internal.watermark import detect as wm_detect
from weightguard._internal.watermark.io import open_source

# Statistical runs (minutes on 2 cores): CI runs them in their own step (make pytest-slow).
pytestmark = pytest.mark.slow

KEY = b"owner-key-0123456789abcdef012345"


def keys(n: int, label: str) -> list[bytes]:
    """Deterministic, distinct 32-byte keys (so the test is reproducible)."""
    return [hashlib.sha256(f"{label}/{i}".encode()).digest() for i in range(n)]


def assert_under_bound(z: np.ndarray) -> None:
    k = len(z)
    # 1. the empirical tail never exceeds the bound where the bound predicts >= 5 hits
    #    (further out the count is 0/1 noise; 3. covers it)
    for t in np.arange(0.0, math.sqrt(2 * math.log(k / 5)), 0.05):
        assert (z >= t).mean() <= math.exp(-t * t / 2), (t, (z >= t).mean())
    # 2. the statistic is standardised under the null (mean 0, sd 1)
    assert abs(z.mean()) < 5 / math.sqrt(k)
    assert 0.9 < z.std() < 1.1
    # 3. family-wise: P(max z >= t) <= k exp(-t^2/2) = 1e-3 at this t
    assert z.max() < math.sqrt(2 * math.log(k / 1e-3))


def test_null_1000_keys_whole_small_trained_model() -> None:
    views = list(wm_detect.blind_views(open_source(trained_mlp(0)), wm.DEFAULT_MIN_NUMEL))
    assert sum(v.a.numel() for v in views) > 80_000
    z = wm_detect.correlate_many(views, keys(1000, "mlp"))
    assert_under_bound(z)


def test_null_keys_whole_minilm_short() -> None:
    views = list(wm_detect.blind_views(open_source(minilm()), wm.DEFAULT_MIN_NUMEL))
    assert sum(v.a.numel() for v in views) == 22_681_344  # every marked tensor
    ks = keys(12, "minilm")
    z = wm_detect.correlate_many(views, ks)
    assert np.all(np.abs(z) < 4.5)  # P(|z| >= 4.5) <= 2 exp(-10.1) each
    # the batched path is the production statistic: same z as check()
    sd = minilm()
    for i in (0, 7):
        assert wm.check(sd, ks[i]).z == __import__("pytest").approx(z[i], abs=1e-4)


def test_null_100k_keys_few_tensors() -> None:
    sd = minilm()
    mlp = trained_mlp(0)
    src = open_source(
        {
            "embeddings.token_type_embeddings.weight": sd[
                "embeddings.token_type_embeddings.weight"
            ],
            "head.weight": mlp["head.weight"],
        }
    )
    views = list(wm_detect.blind_views(src, min_numel=512))
    assert len(views) == 2
    z = wm_detect.correlate_many(views, keys(100_000, "few"))
    assert_under_bound(z)


def test_innocent_models_are_absent() -> None:
    sd = minilm()
    marked = wm.embed(sd, KEY)
    assert wm.check(marked, KEY).verdict == "present"
    for other in keys(5, "wrong"):  # wrong keys on the marked model
        rep = wm.check(marked, other)
        assert rep.verdict == "absent" and rep.z < 4
    assert wm.check(sd, KEY).verdict == "absent"  # the unmarked model
    ft = finetune_minilm(sd, steps=1)  # its fine-tune
    assert any(not torch.equal(ft[k], sd[k]) for k in sd)
    assert wm.check(ft, KEY).verdict == "absent"
    # independently trained models, and a fine-tune of one, blind and informed
    for seed in (1, 2):
        rep = wm.check(trained_mlp(seed), KEY)
        assert rep.verdict == "absent", rep.z
        rep = wm.check(trained_mlp(seed), KEY, original=trained_mlp(0))
        assert rep.verdict == "absent", rep.z
    mlp_ft = train_mlp(trained_mlp(1), steps=20, seed=9)
    assert wm.check(mlp_ft, KEY, original=trained_mlp(1)).verdict == "absent"
