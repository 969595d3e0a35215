"""The picture of `bench_credit.py`: a few scored rollouts, tokens shaded by W, decisive tokens underlined, the
reference beside them (`trl_sgcd.credit.report.html.localization_html_page`), and a PNG of it by headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess


def _pick(scores, rollouts, decisive, weights, *, reference: str, n: int) -> list[int]:
    """Rows to show: failures and successes alternately, those with credit and a decisive token first, shortest first."""
    rows = [i for (name, i) in scores if name == reference]

    def rank(i):
        w = weights[i]
        has_credit = bool((w > 1 + 1e-6).any())
        return (not has_credit, not bool(decisive[i].any()), len(rollouts[i]["completion_ids"]))

    fails = sorted((i for i in rows if rollouts[i]["reward"] < 1), key=rank)
    wins = sorted((i for i in rows if rollouts[i]["reward"] >= 1), key=rank)
    picked = []
    for pair in zip(fails, wins):
        picked.extend(pair)
    return picked[:n]


def write_figure(
    path, scores, rollouts, refs, decisive, tokenizer, *, config, policy="the policy", reference="contrast", n=4
) -> str:
    """Write the HTML page to `path` and, when a Chromium is installed, `path` with `.png`; returns the HTML path."""
    from credit_metrics import credit_weights_of

    from trl_sgcd.credit.report.html import localization_html_page
    from trl_sgcd.credit.report.table import decode_token_strings

    weights, eligible = {}, {}
    for (name, i), score in scores.items():
        if name == reference:
            w, e = credit_weights_of(score, rollouts[i]["tool_mask"], "reverse_kl", config)
            weights[i], eligible[i] = w[0].numpy(), e[0].numpy()
    items = []
    for i in _pick(scores, rollouts, decisive, weights, reference=reference, n=n):
        r = rollouts[i]
        outcome = "success" if r["reward"] >= 1 else "failure"
        credit = int((weights[i] > 1 + 1e-6).sum())
        items.append(
            {
                "meta": f"{r['task_id']} ({r['category']}), {outcome}: {credit} tokens with W > 1, "
                f"{int(decisive[i].sum())} decisive tokens (underlined), {int(eligible[i].sum())} eligible",
                "tokens": decode_token_strings(tokenizer, r["completion_ids"]),
                "weights": weights[i].tolist(),
                "eligible": eligible[i].tolist(),
                "decisive": decisive[i].tolist(),
                "reference": refs[reference][i].text,
            }
        )
    page = localization_html_page(
        items,
        title=f"Where credit lands: {reference} reference, reverse KL",
        cap=config["credit_cap"],
        intro=f"Rollouts of airline train tasks sampled from {policy}, scored without training "
        "(benchmarks/bench_credit.py). Shade: the credit weight W; grey: not eligible (tool observations, masked "
        "literals); underlined: the ground-truth decisive tokens (trl_sgcd.envs.decisive).",
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    screenshot(path, os.path.splitext(path)[0] + ".png")
    return path


def screenshot(html_path: str, png_path: str, *, width: int = 1400, height: int = 2400) -> str | None:
    """PNG of a local page by headless Chromium (`apt install chromium`); `None` when none is installed."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        return None
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={os.path.abspath(png_path)}",
        "file://" + os.path.abspath(html_path),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return png_path


__all__ = ["screenshot", "write_figure"]
