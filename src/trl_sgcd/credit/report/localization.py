r"""Where credit lands: localization metrics of credit weights against ground-truth decisive tokens (pure numpy).

For one rollout with credit weights W, credit-eligible tokens E and decisive tokens D (only D within E counts, since
no other token can receive credit), with the credit mass m_t = W_t - 1 on E:

* **lift** = (share of the mass on D) / (share of E that is D) = (sum_D m / sum_E m) / (|D| / |E|). 1 means credit
  lands on decisive tokens no more than on any others (what `uniform` gives by construction); above 1, it
  concentrates on them. Undefined (NaN) without credit mass or without an eligible decisive token.
* **recall** = |D with W > 1| / |D|;  **precision** = |D with W > 1| / |E with W > 1|.

Baselines with the same credit mass: `random_span_weights` places the rollout's own credit spans (same lengths,
same weights) at uniformly random non-overlapping positions among its eligible tokens; the `uniform` ablation
(`trl_sgcd.credit.weighting.weights.uniform_credit_weights`) spreads the mass evenly. `bootstrap_median` gives the median over
rollouts and a percentile bootstrap interval; `pooled_lift` is the mass-weighted lift over all rollouts at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CREDIT_EPS = 1e-6
"""A token has credit when W > 1 + CREDIT_EPS."""

METRICS = ("lift", "recall", "precision")


def _arrays(weights, eligible, decisive=None):
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    e = np.asarray(eligible, dtype=bool).reshape(-1)
    if e.shape != w.shape:
        raise ValueError(f"eligible has {e.size} entries, weights {w.size}; they must match.")
    if decisive is None:
        return w, e
    d = np.asarray(decisive, dtype=bool).reshape(-1)
    if d.shape != w.shape:
        raise ValueError(f"decisive has {d.size} entries, weights {w.size}; they must match.")
    return w, e, d & e


def rollout_localization(weights, eligible, decisive) -> dict:
    """Lift, recall and precision of one rollout (see the module docstring), with the counts they come from.

    Args:
        weights (`Sequence[float]` of length `T`): credit weights W (>= 1).
        eligible (`Sequence[bool]` of length `T`): credit-eligible tokens.
        decisive (`Sequence[bool]` of length `T`): ground-truth decisive tokens (restricted to `eligible` here).

    Returns:
        `dict`: `lift`, `recall`, `precision` (NaN where undefined), `mass` (sum of W - 1 over E), `mass_decisive`,
        `num_eligible`, `num_decisive` (eligible ones), `num_credit` (eligible tokens with W > 1).
    """
    w, e, d = _arrays(weights, eligible, decisive)
    excess = np.where(e, np.clip(w - 1.0, 0.0, None), 0.0)
    credit = e & (w > 1.0 + CREDIT_EPS)
    n_e, n_d, n_c = int(e.sum()), int(d.sum()), int(credit.sum())
    mass, mass_d = float(excess.sum()), float(excess[d].sum())
    hits = int((credit & d).sum())
    lift = (mass_d / mass) / (n_d / n_e) if mass > 0 and n_d > 0 else math.nan
    return {
        "lift": lift,
        "recall": hits / n_d if n_d else math.nan,
        "precision": hits / n_c if n_c else math.nan,
        "mass": mass,
        "mass_decisive": mass_d,
        "num_eligible": n_e,
        "num_decisive": n_d,
        "num_credit": n_c,
    }


def random_span_weights(weights, eligible, rng: np.random.Generator) -> np.ndarray:
    """The rollout's credit spans moved to random places: same span lengths and weights, same total mass.

    Eligible tokens are taken in order (ineligible ones skipped); each maximal run of eligible tokens with W > 1 is a
    span. The spans, in random order, and the eligible tokens without credit are laid out uniformly at random among
    all arrangements (stars and bars), so spans never overlap. Ineligible tokens keep W = 1.
    """
    w, e = _arrays(weights, eligible)
    positions = np.flatnonzero(e)
    values = w[positions]
    runs, current = [], []
    for v in values:
        if v > 1.0 + CREDIT_EPS:
            current.append(v)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    out = np.ones_like(w)
    if not runs:
        return out
    zeros = len(values) - sum(len(r) for r in runs)
    slots = zeros + len(runs)
    chosen = set(rng.choice(slots, size=len(runs), replace=False).tolist())
    order = rng.permutation(len(runs))
    laid, k = [], 0
    for slot in range(slots):
        if slot in chosen:
            laid.extend(runs[order[k]])
            k += 1
        else:
            laid.append(1.0)
    out[positions] = np.asarray(laid)
    return out


def bootstrap_median(
    values: Sequence[float], *, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float, int]:
    """Median of the finite `values` and its percentile-bootstrap interval: `(median, low, high, n)`.

    NaN entries (undefined metrics) are dropped first; with no finite value, all three are NaN.
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(num_resamples, x.size))], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return float(np.median(x)), float(low), float(high), int(x.size)


def pooled_lift(rows: Sequence[dict]) -> float:
    """Mass-weighted lift over many rollouts: (sum mass_decisive / sum mass) / (sum num_decisive / sum num_eligible)."""
    mass = sum(r["mass"] for r in rows)
    n_d = sum(r["num_decisive"] for r in rows)
    n_e = sum(r["num_eligible"] for r in rows)
    if mass <= 0 or n_d == 0:
        return math.nan
    return (sum(r["mass_decisive"] for r in rows) / mass) / (n_d / n_e)


def bootstrap_pooled_lift(
    rows: Sequence[dict], *, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """`pooled_lift` and its percentile-bootstrap interval over rollouts: `(value, low, high)`."""
    if not rows:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = [pooled_lift([rows[i] for i in rng.integers(0, len(rows), size=len(rows))]) for _ in range(num_resamples)]
    draws = [d for d in draws if np.isfinite(d)]
    if not draws:
        return pooled_lift(rows), math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return pooled_lift(rows), float(low), float(high)


def summarize(rows: Sequence[dict], *, num_resamples: int = 2000, seed: int = 0) -> dict:
    """Per metric `(median, low, high, n)` over rollouts, plus `pooled_lift` `(value, low, high)`, `credit_share`
    (rollouts with any credit mass) and `token_share` (eligible tokens with W > 1, pooled)."""
    out = {m: bootstrap_median([r[m] for r in rows], num_resamples=num_resamples, seed=seed) for m in METRICS}
    out["pooled_lift"] = bootstrap_pooled_lift(rows, num_resamples=num_resamples, seed=seed)
    out["credit_share"] = sum(r["mass"] > 0 for r in rows) / len(rows) if rows else math.nan
    eligible = sum(r["num_eligible"] for r in rows)
    out["token_share"] = sum(r["num_credit"] for r in rows) / eligible if eligible else math.nan
    out["num_rollouts"] = len(rows)
    return out
