"""The demo's figure: training reward and mixed groups per step, pass@1 before/after, and the credit-weight histogram.

Headless (matplotlib's Agg backend, set without touching the global default), so it runs on servers and in tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _series(log_history: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not math.isnan(value) and "step" in entry:
            steps.append(int(entry["step"]))
            values.append(float(value))
    return steps, values


def weight_histogram(weights: Sequence[float], cap: float, bins: int = 20) -> dict:
    """Counts of credit weights in `bins` equal bins over [1, cap] (values are clipped into the range)."""
    edges = [1.0 + (cap - 1.0) * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for w in weights:
        i = int((min(max(float(w), 1.0), cap) - 1.0) / (cap - 1.0) * bins) if cap > 1.0 else 0
        counts[min(i, bins - 1)] += 1
    return {
        "edges": edges,
        "counts": counts,
        "num_tokens": len(weights),
        "share_above_1": sum(float(w) > 1.0 + 1e-6 for w in weights) / max(len(weights), 1),
    }


def plot_demo(metrics: dict, path: str, *, weights: Sequence[float] | None = None, cap: float = 2.0) -> str:
    """Write the demo figure (PNG) to `path` and return `path`.

    Args:
        metrics (`dict`):
            The demo metrics: `training.log_history` (TRL log entries with `step`, `reward`, `sgcd/*`), `before` and
            `after` (evaluation results with `pass@1` and `per_category`), `config.rl_steps`.
        path (`str`):
            Output PNG file.
        weights (`Sequence[float]`, *optional*):
            Credit weights of the eligible tokens of the scored rollouts of the last batches.
        cap (`float`, *optional*, defaults to `2.0`):
            The weight cap c (right edge of the histogram).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax_r, ax_p, ax_w = fig.subplots(1, 3)
    log = metrics.get("training", {}).get("log_history", [])

    # 1. Training reward (success of the sampled train rollouts) and the share of mixed groups, per step.
    steps, reward = _series(log, "reward")
    if steps:
        ax_r.plot(steps, reward, marker="o", label="mean reward (train rollouts)")
    m_steps, mixed = _series(log, "sgcd/mixed_group_fraction")
    if m_steps:
        ax_r.plot(m_steps, mixed, marker="s", linestyle="--", label="mixed-group fraction")
    ax_r.set_ylim(-0.05, 1.05)
    ax_r.set_xlabel("RL step")
    ax_r.set_title("SGCD training")
    ax_r.legend(loc="best", fontsize=8)
    ax_r.grid(alpha=0.3)

    # 2. Held-out pass@1 at step 0 (after the warm start) and after the last RL step, overall and per category.
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    last = int(metrics.get("config", {}).get("rl_steps", 1) or 1)
    xs = [0, last]
    if before and after:
        ax_p.plot(xs, [before["pass@1"], after["pass@1"]], marker="o", linewidth=2.5, color="black", label="overall")
        for category in sorted(before.get("per_category", {})):
            b = before["per_category"][category]
            a = after.get("per_category", {}).get(category, {})
            if "pass@1" in a:
                ax_p.plot(
                    xs, [b["pass@1"], a["pass@1"]], marker=".", alpha=0.7, label=f"{category} (n={b['num_tasks']})"
                )
    ax_p.set_ylim(-0.05, 1.05)
    ax_p.set_xticks(xs)
    ax_p.set_xlabel("RL step")
    ax_p.set_title("held-out pass@1 (greedy)")
    ax_p.legend(loc="best", fontsize=8)
    ax_p.grid(alpha=0.3)

    # 3. Credit weights W = clip(1 + gamma*s, 1, c) on the eligible tokens of scored rollouts.
    if weights is not None and len(weights):
        hist = weight_histogram(weights, cap)
        edges, counts = hist["edges"], hist["counts"]
        ax_w.bar(
            edges[:-1],
            counts,
            width=[b - a for a, b in zip(edges[:-1], edges[1:])],
            align="edge",
            edgecolor="black",
            linewidth=0.5,
        )
        ax_w.set_yscale("log")
        ax_w.set_title(
            f"credit weights, last batches ({hist['num_tokens']} tokens, {100 * hist['share_above_1']:.1f}% > 1)"
        )
    else:
        ax_w.text(0.5, 0.5, "no scored rollouts\n(no mixed group)", ha="center", va="center", transform=ax_w.transAxes)
        ax_w.set_title("credit weights")
    ax_w.set_xlim(1.0 - 0.02 * (cap - 1.0), cap + 0.02 * (cap - 1.0))
    ax_w.set_xlabel("W")
    ax_w.grid(alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
