"""Where credit lands, measured (for `bench_credit.py`): the trainer's weights of one scored rollout, the localization
metrics of every (reference, divergence) variant against its equal-mass baselines, and the printed table.
"""

from __future__ import annotations

import math

import numpy as np
import torch

REFERENCES = ("contrast", "llm", "no_reference")
DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
DIAGNOSTICS = {"no literal mask": {"literal_mask": False}, "spike_z 1.0": {"credit_spike_z": 1.0}}


def credit_weights_of(score, tool_mask, divergence, config, *, literal_mask=True, **override):
    """(W, eligible) of one rollout with the trainer's segmenter and weights (`SGCDConfig` defaults + `override`)."""
    from trl_sgcd import credit_saliency, credit_weights

    c = {**config, **override}
    eligible = np.asarray(tool_mask, dtype=bool)
    if literal_mask:
        eligible = eligible & ~score["literal"]
    e = torch.from_numpy(eligible)[None]  # (1, T)
    s = credit_saliency(
        torch.from_numpy(score["divergence"][divergence])[None],
        torch.from_numpy(score["entropy"][divergence])[None],
        e,
        spike_z=c["credit_spike_z"],
        saturation_z=c["credit_saturation_z"],
        reset_z=c["credit_reset_z"],
        entropy_rise=c["credit_entropy_rise"],
        max_span=c["credit_max_span"],
        min_divergence=c["credit_min_divergence"],
    )
    w = credit_weights(s, gamma=c["credit_gamma"], cap=c["credit_cap"], eligible_mask=e)
    return w, e


# --------------------------------------------------------------------------------------------------- metrics
def variant_rows(scores, rollouts, decisive, *, config, reference, divergence, draws, seed, **options):
    """Per-rollout metrics of one variant and of its two equal-mass baselines."""
    from trl_sgcd.credit.report.localization import random_span_weights, rollout_localization
    from trl_sgcd.credit.weighting.weights import uniform_credit_weights

    rng = np.random.default_rng(seed)
    out = {"sgcd": [], "random spans": [], "uniform": [], "signal_lift": [], "eligible_decisive_share": []}
    for (name, i), score in sorted(scores.items(), key=lambda kv: kv[0][1]):
        if name != reference:
            continue
        w, e = credit_weights_of(score, rollouts[i]["tool_mask"], divergence, config, **options)
        d, ew, en = decisive[i], w[0].numpy(), e[0].numpy()
        out["sgcd"].append(rollout_localization(ew, en, d))
        out["uniform"].append(rollout_localization(uniform_credit_weights(w, e)[0].numpy(), en, d))
        draws_rows = [rollout_localization(random_span_weights(ew, en, rng), en, d) for _ in range(draws)]
        out["random spans"].append(
            {**draws_rows[0], **{m: _nanmean([x[m] for x in draws_rows]) for m in ("lift", "recall", "precision")}}
        )
        out["signal_lift"].append(rollout_localization(1.0 + score["divergence"][divergence] * en, en, d)["lift"])
        out["eligible_decisive_share"].append(float((np.asarray(d) & en).sum() / max(1, np.asarray(d).sum())))
    return out


def _nanmean(values):
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def fmt_ci(stat) -> str:
    """`median [low, high]` of a `(median, low, high, ...)` statistic, or n/a."""
    med, lo, hi = stat[:3]
    return "n/a" if not np.isfinite(med) else f"{med:5.2f} [{lo:4.2f}, {hi:4.2f}]"


def divergence_ratio(divergence, eligible, decisive) -> float:
    """Mean raw divergence on decisive eligible tokens / on the other eligible tokens (NaN when undefined)."""
    d = np.asarray(divergence, dtype=np.float64)
    dec = np.asarray(decisive, dtype=bool) & eligible
    other = eligible & ~dec
    if not dec.any() or not other.any() or d[other].mean() <= 0:
        return math.nan
    return float(d[dec].mean() / d[other].mean())


def format_table(results: dict) -> str:
    head = (
        f"{'variant':<34}{'rollouts':>9}{'credit':>8}{'W>1':>6}  {'lift [95% CI]':<20}{'recall [95% CI]':<20}"
        f"{'precision [95% CI]':<20}"
    )
    lines = [head, "-" * len(head)]
    for name, entry in results["variants"].items():
        for arm in ("sgcd", "random spans", "uniform"):
            s = entry[arm]
            label = name if arm == "sgcd" else f"  {arm} (same mass)"
            lines.append(
                f"{label:<34}{s['num_rollouts']:>9}{s['credit_share']:>8.2f}{s['token_share']:>6.2f}  {fmt_ci(s['lift']):<20}"
                f"{fmt_ci(s['recall']):<20}{fmt_ci(s['precision']):<20}"
            )
        lines.append(
            f"{'  raw divergence lift':<34}{'':>23}  {fmt_ci(entry['signal_lift']):<20}"
            f"decisive tokens eligible {entry['eligible_decisive_share']:.2f}"
        )
    return "\n".join(lines)


def summarize_variants(scores, rollouts, decisive, config, draws, seed) -> dict:
    from trl_sgcd.credit.report.localization import bootstrap_median, summarize

    variants = {f"{ref} / {div}": (ref, div, {}) for ref in REFERENCES for div in DIVERGENCES}
    variants |= {f"contrast / reverse_kl, {label}": ("contrast", "reverse_kl", o) for label, o in DIAGNOSTICS.items()}
    out = {}
    for label, (ref, div, options) in variants.items():
        rows = variant_rows(
            scores, rollouts, decisive, config=config, reference=ref, divergence=div, draws=draws, seed=seed, **options
        )
        out[label] = {arm: summarize(rows[arm], seed=seed) for arm in ("sgcd", "random spans", "uniform")}
        out[label]["signal_lift"] = bootstrap_median(rows["signal_lift"], seed=seed)
        out[label]["eligible_decisive_share"] = _nanmean(rows["eligible_decisive_share"])
    return out


# --------------------------------------------------------------------------------------------------- breakdown
def outcome_breakdown(scores, rollouts, decisive, kinds, config, *, threshold, reference="contrast"):
    """Default variant (`reference` / reverse KL, the `SGCDConfig` segmenter) per (outcome, first decisive kind):
    rollouts, median lift, pooled W > 1 share, decisive share of eligible tokens, median raw-divergence ratio."""
    from trl_sgcd.credit.report.localization import bootstrap_median, rollout_localization

    cells = {}
    for (name, i), score in sorted(scores.items(), key=lambda kv: kv[0][1]):
        if name != reference:
            continue
        w, e = credit_weights_of(score, rollouts[i]["tool_mask"], "reverse_kl", config)
        ew, en, d = w[0].numpy(), e[0].numpy(), np.asarray(decisive[i]) & e[0].numpy()
        ratio = divergence_ratio(score["divergence"]["reverse_kl"], en, d)
        outcome = "success" if rollouts[i]["reward"] >= threshold else "failure"
        cells.setdefault((outcome, kinds[i]), []).append({**rollout_localization(ew, en, d), "ratio": ratio})
    out = {}
    for (outcome, kind), rows in sorted(cells.items()):
        n_e = sum(r["num_eligible"] for r in rows)
        out[f"{outcome} / {kind}"] = {
            "rollouts": len(rows),
            "lift": bootstrap_median([r["lift"] for r in rows]),
            "ratio": bootstrap_median([r["ratio"] for r in rows]),
            "w_share": sum(r["num_credit"] for r in rows) / max(n_e, 1),
            "decisive_share": sum(r["num_decisive"] for r in rows) / max(n_e, 1),
        }
    return out


def format_breakdown(breakdown: dict) -> str:
    head = f"{'outcome / first decisive kind':<34}{'n':>4}{'W>1':>6}{'decisive':>9}  {'lift [95% CI]':<20}{'d ratio [95% CI]':<20}"
    lines = ["default variant (contrast / reverse_kl) by outcome and decisive kind", head, "-" * len(head)]
    for label, c in breakdown.items():
        lines.append(
            f"{label:<34}{c['rollouts']:>4}{c['w_share']:>6.2f}{c['decisive_share']:>9.2f}  {fmt_ci(c['lift']):<20}"
            f"{fmt_ci(c['ratio']):<20}"
        )
    return "\n".join(lines)
