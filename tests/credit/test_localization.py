"""Localization metrics against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from trl_sgcd.credit.report.localization import (
    bootstrap_median,
    pooled_lift,
    random_span_weights,
    rollout_localization,
    summarize,
)
from trl_sgcd.credit.weighting.weights import uniform_credit_weights


def test_hand_computed_lift_recall_precision():
    # 6 eligible tokens, 2 decisive (idx 1, 2); credit 1.0 on idx 1, 0.5 on idx 4; idx 5 ineligible (ignored)
    w = [1.0, 2.0, 1.0, 1.0, 1.5, 2.0, 1.0]
    e = [1, 1, 1, 1, 1, 0, 1]
    d = [0, 1, 1, 0, 0, 1, 0]
    r = rollout_localization(w, e, d)
    # mass share on D = 1.0 / 1.5; decisive share = 2 / 6
    assert r["lift"] == pytest.approx((1.0 / 1.5) / (2 / 6))
    assert r["recall"] == pytest.approx(1 / 2)  # idx 1 of {1, 2}
    assert r["precision"] == pytest.approx(1 / 2)  # idx 1 of {1, 4}
    assert (r["num_eligible"], r["num_decisive"], r["num_credit"]) == (6, 2, 2)
    assert r["mass"] == pytest.approx(1.5) and r["mass_decisive"] == pytest.approx(1.0)


def test_undefined_cases_are_nan():
    r = rollout_localization([1.0, 1.0], [1, 1], [1, 0])  # no credit mass
    assert math.isnan(r["lift"]) and r["recall"] == 0.0 and math.isnan(r["precision"])
    r = rollout_localization([2.0, 1.0], [1, 1], [0, 0])  # no decisive token
    assert math.isnan(r["lift"]) and math.isnan(r["recall"]) and r["precision"] == 0.0
    r = rollout_localization([2.0, 1.0], [1, 0], [0, 1])  # the decisive token is not eligible
    assert r["num_decisive"] == 0 and math.isnan(r["lift"])
    with pytest.raises(ValueError, match="decisive"):
        rollout_localization([1.0], [1], [1, 0])


def test_uniform_has_lift_one_and_perfect_recall():
    w = torch.tensor([[1.0, 2.0, 1.0, 1.5, 1.0, 1.0]])
    e = torch.tensor([[1, 1, 1, 1, 0, 1]]).bool()
    d = [0, 0, 1, 1, 0, 0]
    u = uniform_credit_weights(w, e)[0].tolist()
    r = rollout_localization(u, e[0].tolist(), d)
    assert r["lift"] == pytest.approx(1.0) and r["recall"] == 1.0
    assert r["precision"] == pytest.approx(2 / 5)
    assert r["mass"] == pytest.approx(rollout_localization(w[0].tolist(), e[0].tolist(), d)["mass"])


def test_random_spans_keep_lengths_and_mass_and_are_uniform():
    w = np.array([1.0, 1.8, 1.8, 1.0, 1.0, 1.4, 1.0, 3.0, 1.0, 1.0])
    e = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 1], dtype=bool)  # idx 7 ineligible: its weight is dropped
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(3000):
        r = random_span_weights(w, e, rng)
        assert r[7] == 1.0
        assert sorted(r[e].round(6).tolist()) == sorted(w[e].round(6).tolist())  # same values, same mass
        big = np.flatnonzero(np.isclose(r[e], 1.8))
        assert big.size == 2 and big[1] == big[0] + 1  # the 2-token span stays whole
        starts.append(int(big[0]))
    # 9 eligible tokens, spans of 2 and 1 and 6 free tokens: 8!/(6!2!) * 2 = 56 arrangements; the 2-span starts at
    # position 0 in 7 of them (the rest: 7 positions for the 1-span among 7 slots) -> probability 7/56
    assert np.mean(np.array(starts) == 0) == pytest.approx(7 / 56, abs=0.02)
    assert (random_span_weights(np.ones(4), np.ones(4, dtype=bool), rng) == 1).all()


def test_random_spans_lift_is_one_on_average():
    rng = np.random.default_rng(1)
    w = np.ones(40)
    w[10:14] = 2.0
    e = np.ones(40, dtype=bool)
    d = np.zeros(40, dtype=bool)
    d[10:14] = True
    assert rollout_localization(w, e, d)["lift"] == pytest.approx(10.0)  # all the mass on 4 of 40 tokens
    lifts = [rollout_localization(random_span_weights(w, e, rng), e, d)["lift"] for _ in range(4000)]
    assert np.mean(lifts) == pytest.approx(1.0, abs=0.08)


def test_bootstrap_median_and_pooled_lift():
    med, lo, hi, n = bootstrap_median([1.0, 2.0, 3.0, float("nan"), 4.0, 5.0], num_resamples=500)
    assert (med, n) == (3.0, 5) and 1.0 <= lo <= med <= hi <= 5.0
    assert bootstrap_median([float("nan")])[3] == 0
    assert bootstrap_median([2.0] * 10) == (2.0, 2.0, 2.0, 10)
    rows = [
        {"mass": 1.0, "mass_decisive": 1.0, "num_decisive": 1, "num_eligible": 10},
        {"mass": 3.0, "mass_decisive": 0.0, "num_decisive": 1, "num_eligible": 10},
    ]
    assert pooled_lift(rows) == pytest.approx((1.0 / 4.0) / (2 / 20))
    rows = [rollout_localization([1, 2, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0]) for _ in range(8)]
    summary = summarize(rows, num_resamples=200)
    assert summary["lift"][:3] == (4.0, 4.0, 4.0) and summary["credit_share"] == 1.0
    assert summary["pooled_lift"][0] == pytest.approx(4.0) and summary["num_rollouts"] == 8
