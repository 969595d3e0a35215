"""Where the demo's credit landed, per rollout: the local HTML credit table and the rollout shown in `demo.png`.

Both read the `view` of each scored rollout that `trl_sgcd.demo.recording` keeps (token strings, W per token,
eligible and decisive flags, advantage, reference). The page is `trl_sgcd.credit.report.html.localization_html_page`
(tokens shaded by W, ground-truth decisive tokens underlined, the credit reference beside), written as
`credit_table.html` next to `demo.png`; it needs no W&B.
"""

from __future__ import annotations

import os

LEGEND = (
    "W = clip(1 + gamma*s, 1, c) multiplies the rollout's GRPO advantage on each token; s = the token's saliency "
    "(teacher-student divergence spike), white = 1 (plain GRPO), red = the cap c = {cap:g} (no token gets more); "
    "grey = not eligible (tool output, masked literals); underlined = decisive (ground truth)"
)


def views(credit_log: list[dict]) -> list[dict]:
    """Every recorded rollout view, with its step, in the order recorded."""
    return [dict(r["view"], step=e["step"]) for e in credit_log for r in e["rows"] if r.get("view")]


def credit_tokens(view: dict) -> int:
    """Eligible tokens of a view weighted above 1."""
    return sum(ok and w > 1.0 + 1e-6 for w, ok in zip(view["weights"], view["eligible"]))


def pick_rollout(credit_log: list[dict]) -> dict | None:
    """The rollout the figure shows: the successful one (advantage > 0) with the most tokens weighted above 1, else
    any with the most; `None` when no rollout was scored."""
    candidates = views(credit_log)
    if not candidates:
        return None

    def key(view):
        return ((view.get("advantage") or 0.0) > 0, credit_tokens(view) > 0, credit_tokens(view))

    return max(candidates, key=key)


def _meta(view: dict) -> str:
    eligible = sum(view["eligible"])
    advantage = view.get("advantage")
    outcome = (
        "" if advantage is None else f" | advantage {advantage:+.2f} ({'success' if advantage > 0 else 'failure'})"
    )
    return (
        f"step {view['step']}{outcome} | {credit_tokens(view)} of {eligible} eligible tokens weighted above 1 | "
        f"{sum(view['decisive'])} decisive tokens"
    )


def write_credit_table(credit_log: list[dict], path: str, *, cap: float, max_rollouts: int = 32) -> str | None:
    """Write the page of the run's scored rollouts (at most `max_rollouts`, in step order) to `path`; returns the
    path, or `None` (nothing written) when no rollout was scored."""
    from trl_sgcd.credit.report.html import localization_html_page

    items = [
        {
            "meta": _meta(view),
            "tokens": view["tokens"],
            "weights": view["weights"],
            "eligible": view["eligible"],
            "decisive": view["decisive"],
            "reference": view["reference"] or "(no reference text)",
        }
        for view in views(credit_log)[:max_rollouts]
    ]
    if not items:
        return None
    page = localization_html_page(
        items, title="SGCD demo: where credit landed", cap=cap, intro=LEGEND.format(cap=cap) + "."
    )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
