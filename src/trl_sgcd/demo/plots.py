"""The demo's figure: training reward and mixed groups per step, pass@1 before/after, the credit-weight histogram, and
where credit landed on one rollout (its tokens shaded by W, as in the HTML credit table).

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


PANEL_LEGEND = (
    "W = clip(1 + gamma*s, 1, c) multiplies the token's GRPO advantage (s: saliency, the teacher-student divergence "
    "spike). White: W = 1; red: W = c = {cap:g}, the cap. Grey: not eligible (tool output). Underlined: decisive."
)


def layout_tokens(tokens: Sequence[str], *, columns: int) -> list[tuple[int, int, str, int]]:
    """Token strings on a character grid of `columns` columns: `(line, column, text, token index)` pieces (a token is
    split at newlines and at the right edge)."""
    pieces, line, col = [], 0, 0
    for index, token in enumerate(tokens):
        for j, part in enumerate(token.replace("\t", " ").split("\n")):
            if j:
                line, col = line + 1, 0
            while part:
                if col >= columns:
                    line, col = line + 1, 0
                piece, part = part[: columns - col], part[columns - col :]
                pieces.append((line, col, piece, index))
                col += len(piece)
    return pieces


def _rollout_panel(ax, view: dict | None, cap: float, *, columns: int = 160, max_lines: int = 12) -> None:
    """One rollout's tokens on a monospace grid, each shaded by its W (`trl_sgcd.credit.report.html.weight_color`)."""
    from matplotlib.patches import Rectangle

    from trl_sgcd.credit.report.html import weight_color

    ax.set_axis_off()
    if view is None:
        ax.text(0.5, 0.5, "no scored rollout (no mixed group): nowhere to show credit", ha="center", va="center")
        return
    weights, eligible, decisive = view["weights"], view["eligible"], view["decisive"]
    pieces = layout_tokens(view["tokens"], columns=columns)
    credited = [line for line, _, _, i in pieces if eligible[i] and weights[i] > 1.0 + 1e-6]
    first = max(min(credited) - 2, 0) if credited else 0
    shown = [p for p in pieces if first <= p[0] < first + max_lines]
    ax.set_xlim(0, columns)
    ax.set_ylim(max_lines + 0.2, -0.2)
    dpi = ax.figure.dpi
    width_px = ax.get_position().width * ax.figure.get_figwidth() * dpi
    fontsize = width_px / columns / (0.602 * dpi / 72)  # DejaVu Sans Mono advances 0.602 em per character
    for line, col, text, i in shown:
        y = line - first
        if not eligible[i]:
            face = "#ececec"
        elif weights[i] > 1.0 + 1e-6:
            face = tuple(c / 255 for c in weight_color(weights[i], cap=cap))
        else:
            face = None
        if face is not None:
            ax.add_patch(Rectangle((col, y), len(text), 1.0, facecolor=face, edgecolor="none"))
        if decisive[i]:
            ax.plot([col, col + len(text)], [y + 0.97, y + 0.97], color="#1f4fbf", linewidth=1.2)
        color = "#8c8c8c" if not eligible[i] else "#1a1a1a"
        ax.text(
            col,
            y + 0.5,
            text,
            family="monospace",
            fontsize=fontsize,
            va="center",
            ha="left",
            color=color,
            parse_math=False,
        )
    n_credit = sum(ok and w > 1.0 + 1e-6 for w, ok in zip(weights, eligible))
    advantage = view.get("advantage")
    outcome = "" if advantage is None else (", a success" if advantage > 0 else ", a failure")
    more = (
        f"; lines {first + 1}-{first + max_lines} of {pieces[-1][0] + 1}"
        if pieces and pieces[-1][0] >= max_lines
        else ""
    )
    ax.set_title(
        f"where credit landed on one rollout (step {view.get('step', '?')}{outcome}): {n_credit} of "
        f"{sum(eligible)} eligible tokens weighted above 1{more}",
        fontsize=10,
    )
    ax.text(0, max_lines + 0.2, PANEL_LEGEND.format(cap=cap), fontsize=8.5, va="top", ha="left", parse_math=False)


def plot_demo(
    metrics: dict,
    path: str,
    *,
    weights: Sequence[float] | None = None,
    cap: float = 2.0,
    rollout: dict | None = None,
) -> str:
    """Write the demo figure (PNG) to `path` and return `path`.

    Args:
        metrics (`dict`):
            The demo metrics: `training.log_history` (TRL log entries with `step`, `reward`, `sgcd/*`), `before` and
            `after` (evaluation results with `pass@1` and `per_category`), `config.rl_steps`.
        path (`str`):
            Output PNG file.
        weights (`Sequence[float]`, *optional*):
            Credit weights of the eligible tokens of every scored rollout of the run.
        cap (`float`, *optional*, defaults to `2.0`):
            The weight cap c (right edge of the histogram, strongest shade of the rollout panel).
        rollout (`dict`, *optional*):
            The rollout of the bottom panel (`trl_sgcd.demo.credit_view.pick_rollout`): `tokens`, `weights`,
            `eligible`, `decisive`, `advantage`, `step`. Without one the panel says that no rollout was scored.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 8.6), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 0.95])
    ax_r, ax_p, ax_w = (fig.add_subplot(grid[0, i]) for i in range(3))
    ax_t = fig.add_subplot(grid[1, :])
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
        above = round(hist["share_above_1"] * hist["num_tokens"])
        ax_w.set_title(f"W on all scored tokens: {above} of {hist['num_tokens']} above 1", fontsize=10)
    else:
        ax_w.text(0.5, 0.5, "no scored rollouts\n(no mixed group)", ha="center", va="center", transform=ax_w.transAxes)
        ax_w.set_title("credit weights")
    ax_w.set_xlim(1.0 - 0.02 * (cap - 1.0), cap + 0.02 * (cap - 1.0))
    ax_w.set_xlabel("W")
    ax_w.grid(alpha=0.3)

    fig.tight_layout()
    _rollout_panel(ax_t, rollout, cap)  # after the layout: its font size follows the panel's final width
    fig.savefig(path, format="png")
    return path
