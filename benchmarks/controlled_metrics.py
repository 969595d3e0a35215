"""Metrics of the controlled tier (`bench_credit_controlled.py`): per failure, then medians over groups with bootstrap
intervals; the segmenter sweep over saved divergences; the printed tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from credit_metrics import divergence_ratio, fmt_ci

SWEEP = {
    "credit_reset_z": (-0.5, 0.5, 1.0, 1.5, 2.0),
    "credit_saturation_z": (4.0, 8.0, 16.0),
    "credit_max_span": (32, 8),
    "credit_spike_z": (2.0, 3.0),
}
SEGMENTER = ("spike_z", "saturation_z", "reset_z", "entropy_rise", "max_span", "min_divergence")


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (NaN without both classes)."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def row_metrics(score: dict, decisive: np.ndarray, weights: np.ndarray, rng, draws: int) -> dict:
    """Localization of one failure: raw-divergence ratio and AUC, W > 1 share, lift vs random spans, recall."""
    from trl_sgcd.credit.report.localization import random_span_weights, rollout_localization

    d, e = score["divergence"].astype(np.float64), score["eligible"]
    loc = rollout_localization(weights, e, decisive)
    randoms = [rollout_localization(random_span_weights(weights, e, rng), e, decisive)["lift"] for _ in range(draws)]
    finite = [x for x in randoms if np.isfinite(x)]
    return {
        **loc,
        "ratio": divergence_ratio(d, e, decisive),
        "auc": auc(d[e], decisive[e]),
        "share": loc["num_credit"] / max(loc["num_eligible"], 1),
        "random_lift": float(np.mean(finite)) if finite else math.nan,
        "max_abs_divergence": float(np.abs(d).max()) if d.size else 0.0,
    }


def summarize_rows(metrics: list[dict], seed: int = 0) -> dict:
    from trl_sgcd.credit.report.localization import bootstrap_median, bootstrap_pooled_lift

    out = {
        k: bootstrap_median([m[k] for m in metrics], seed=seed)
        for k in ("ratio", "auc", "share", "lift", "random_lift", "recall")
    }
    out["pooled_lift"] = bootstrap_pooled_lift(metrics, seed=seed)
    n_e = sum(m["num_eligible"] for m in metrics)
    out["pooled_share"] = sum(m["num_credit"] for m in metrics) / max(n_e, 1)
    out["max_abs_divergence"] = max((m["max_abs_divergence"] for m in metrics), default=0.0)
    out["n"] = len(metrics)
    return out


def summarize_context(scores: list[dict], rows: list[dict], *, draws: int, seed: int) -> dict:
    """All failures of one context, and each corruption kind alone."""
    rng = np.random.default_rng(seed)
    metrics = [row_metrics(s, r["decisive"], s["weights"], rng, draws) for s, r in zip(scores, rows)]
    out = {"all": summarize_rows(metrics, seed)}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        out[kind] = summarize_rows([m for m, r in zip(metrics, rows) if r["kind"] == kind], seed)
    return out


def reweigh(score: dict, config: dict) -> np.ndarray:
    """W of one failure from its saved divergence and entropy under the segmenter settings of `config`."""
    from trl_sgcd import credit_saliency, credit_weights

    e = torch.from_numpy(score["eligible"])[None]
    s = credit_saliency(
        torch.from_numpy(score["divergence"])[None],
        torch.from_numpy(score["entropy"])[None],
        e,
        **{k: config[f"credit_{k}"] for k in SEGMENTER},
    )
    return credit_weights(s, gamma=config["credit_gamma"], cap=config["credit_cap"], eligible_mask=e)[0].numpy()


def sweep(scores: dict, rows: list[dict], config: dict, *, grid: dict, draws: int, seed: int, context="contrast"):
    """The contrast context's W > 1 share and lift for every combination of `grid` (other settings: `config`)."""
    out = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        if setting.get("credit_reset_z", -1) >= setting.get("credit_spike_z", config["credit_spike_z"]):
            continue
        cfg = {**config, **setting}
        rng = np.random.default_rng(seed)
        metrics = [row_metrics(s, r["decisive"], reweigh(s, cfg), rng, draws) for s, r in zip(scores[context], rows)]
        out.append({"setting": setting, **summarize_rows(metrics, seed)})
    return out


def format_table(results: dict) -> str:
    head = (
        f"{'context':<12}{'kind':<16}{'n':>3}  {'d ratio [95% CI]':<20}{'AUC':>6}{'W>1':>6}  "
        f"{'lift [95% CI]':<20}{'pooled lift':<20}{'random':>7}{'recall':>7}"
    )
    lines = [head, "-" * len(head)]
    for context, per_kind in results["contexts"].items():
        for kind, s in per_kind.items():
            if context == "identity" and kind != "all":
                continue
            if context == "identity":
                lines.append(
                    f"{context:<12}{kind:<16}{s['n']:>3}  max |d| = {s['max_abs_divergence']:.3g} (must be 0)"
                )
                continue
            lines.append(
                f"{context if kind == 'all' else '':<12}{kind:<16}{s['n']:>3}  {fmt_ci(s['ratio']):<20}{s['auc'][0]:>6.2f}"
                f"{s['pooled_share']:>6.2f}  {fmt_ci(s['lift']):<20}{fmt_ci(s['pooled_lift']):<20}"
                f"{s['random_lift'][0]:>7.2f}{s['recall'][0]:>7.2f}"
            )
    return "\n".join(lines)


def format_sweep(rows: list[dict]) -> str:
    head = (
        f"{'reset_z':>8}{'sat_z':>7}{'max_span':>9}{'spike_z':>8}{'W>1':>7}  {'lift [95% CI]':<20}{'pooled lift':<20}"
    )
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: -np.nan_to_num(r["lift"][0])):
        s = r["setting"]
        lines.append(
            f"{s.get('credit_reset_z', ''):>8}{s.get('credit_saturation_z', ''):>7}{s.get('credit_max_span', ''):>9}"
            f"{s.get('credit_spike_z', ''):>8}{r['pooled_share']:>7.2f}  {fmt_ci(r['lift']):<20}{fmt_ci(r['pooled_lift']):<20}"
        )
    return "\n".join(lines)
