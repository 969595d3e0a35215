"""HTML of credit weights: tokens shaded by W (decisive tokens underlined), pages of rollouts, written to disk.

Pure string builders plus one writer ([`save_credit_html`]); inline CSS only, so a page renders in a W&B `Html`
cell, in a browser, and in a headless-browser screenshot.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

# W = 1 is white; W = cap is this colour. Each channel falls as W rises, so shading is monotone in W.
_STRONG_RGB = (214, 39, 40)
_INELIGIBLE_STYLE = "color:#8c8c8c;background:#ececec"
_DECISIVE_STYLE = ";text-decoration:underline;text-decoration-color:#1f4fbf;text-decoration-thickness:2px"
_BOX_STYLE = (
    "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;line-height:1.55;"
    "white-space:pre-wrap;word-break:break-word;color:#1a1a1a;background:#ffffff;padding:6px"
)
CREDIT_EPS = 1e-6
"""A weight counts as credit (shaded, counted in `credit_tokens`) above 1 + this."""


def weight_color(weight: float, *, cap: float) -> tuple[int, int, int]:
    """RGB shade of a credit weight: white at W <= 1, `_STRONG_RGB` at W >= `cap`, linear in between."""
    if not cap > 1.0:
        raise ValueError(f"cap={cap!r} must be > 1 (W is clipped to [1, cap]).")
    t = min(max((float(weight) - 1.0) / (cap - 1.0), 0.0), 1.0)
    return tuple(round(255 + (c - 255) * t) for c in _STRONG_RGB)


def render_weighted_html(
    tokens: Sequence[str],
    weights: Sequence[float],
    eligible: Sequence[bool],
    *,
    cap: float,
    decisive: Sequence[bool] | None = None,
) -> str:
    r"""
    One completion as self-contained HTML: every token a `<span>` shaded by its credit weight.

    Args:
        tokens (`Sequence[str]`):
            Token strings; `"".join(tokens)` is the completion text.
        weights (`Sequence[float]`):
            Credit weight W of each token (same length as `tokens`).
        eligible (`Sequence[bool]`):
            Whether each token could receive credit. Ineligible tokens (tool observations, masked literals) are
            greyed, whatever their weight.
        cap (`float`):
            The weight drawn in the strongest colour (the trainer's `credit_cap`); keep it fixed across steps so
            shades compare.
        decisive (`Sequence[bool]`, *optional*):
            Ground-truth decisive tokens (`trl_sgcd.envs.decisive`), drawn underlined.

    Returns:
        `str`: a `<div>` with inline CSS only (renders in a W&B `Html` cell and in a browser). Token text is
        HTML-escaped, newlines are kept (`white-space: pre-wrap`), and each span's `title` gives its weight.
    """
    decisive = [False] * len(tokens) if decisive is None else list(decisive)
    if not len(tokens) == len(weights) == len(eligible) == len(decisive):
        raise ValueError(
            f"tokens, weights, eligible and decisive differ in length: {len(tokens)}, {len(weights)}, "
            f"{len(eligible)}, {len(decisive)}."
        )
    parts = [f'<div class="sgcd-credit" style="{_BOX_STYLE}">']
    for token, weight, ok, key in zip(tokens, weights, eligible, decisive):
        text = html.escape(token, quote=True)
        weight = float(weight)
        mark = _DECISIVE_STYLE if key else ""
        note = ", decisive" if key else ""
        if not ok:
            style, title = _INELIGIBLE_STYLE + mark, f"W={weight:.3f} (not eligible{note})"
        elif weight > 1.0 + CREDIT_EPS:
            r, g, b = weight_color(weight, cap=cap)
            style, title = f"background:rgb({r},{g},{b})" + mark, f"W={weight:.3f}" + (" (decisive)" if key else "")
        else:
            style, title = mark.lstrip(";"), f"W={weight:.3f}" + (" (decisive)" if key else "")
        parts.append(
            f'<span style="{style}" title="{title}">{text}</span>' if style else f'<span title="{title}">{text}</span>'
        )
    parts.append("</div>")
    return "".join(parts)


_PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a1a1a;background:#fafafa}
.row{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 18px;padding:10px 14px}
.meta{font-size:13px;color:#444;margin-bottom:6px}.meta b{color:#111}
.prompt{font-size:13px;margin:4px 0 8px;white-space:pre-wrap}
details{font-size:12px;margin:4px 0 8px}details pre{white-space:pre-wrap;background:#f4f4f4;padding:6px}
.legend span{display:inline-block;padding:0 6px;border:1px solid #ccc;font-family:monospace;font-size:12px}
"""


def credit_html_page(rows: Sequence[dict], *, title: str = "SGCD credit table", cap: float | None = None) -> str:
    """A standalone HTML page of `rows` (from [`credit_table_rows`]): one card per rollout, with a colour legend."""
    legend = ""
    if cap is not None:
        stops = [1.0 + (cap - 1.0) * k / 4 for k in range(5)]
        cells = "".join(f'<span style="background:rgb{weight_color(w, cap=cap)}">W={w:.2f}</span>' for w in stops)
        legend = f'<p class="legend">Weight: {cells} <span style="{_INELIGIBLE_STYLE}">not eligible</span></p>'
    cards = []
    for row in rows:
        e = html.escape
        meta = (
            f"step <b>{row['step']}</b> &middot; group <b>{row['group']}</b> &middot; reward "
            f"<b>{row['reward']:.3f}</b> &middot; advantage <b>{row['advantage']:+.3f}</b> &middot; credit tokens "
            f"<b>{row['credit_tokens']}</b> &middot; W mean <b>{row['weight_mean']:.3f}</b> / max "
            f"<b>{row['weight_max']:.3f}</b> &middot; reference: <b>{e(row['reference_source'])}</b>"
        )
        reference = (
            f"<details><summary>reference</summary><pre>{e(row['reference'])}</pre></details>"
            if row["reference"]
            else ""
        )
        cards.append(
            f'<div class="row"><div class="meta">{meta}</div><div class="prompt">{e(row["prompt"])}</div>'
            f"{reference}{row['credit_html']}</div>"
        )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_PAGE_CSS}</style></head><body><h1>{html.escape(title)}</h1>{legend}\n"
        + "\n".join(cards)
        + "\n</body></html>\n"
    )


def save_credit_html(
    rows: Sequence[dict], path: str | os.PathLike, *, title: str = "SGCD credit table", cap: float | None = None
) -> str:
    """Write [`credit_html_page`] of `rows` to `path` (parent folders created); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(credit_html_page(rows, title=title, cap=cap))
    return path


_SIDE_CSS = """
.pair{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:12px;align-items:start}
.pair pre{white-space:pre-wrap;word-break:break-word;font-size:11px;background:#f4f4f4;padding:6px;margin:0}
.pair h3{font-size:12px;margin:0 0 4px;color:#444}
"""


def localization_html_page(items: Sequence[dict], *, title: str, cap: float, intro: str = "") -> str:
    """A standalone page of rollouts, each shaded by W with its decisive tokens underlined and its reference beside.

    Args:
        items (`Sequence[dict]`):
            One per rollout: `meta` (one line of HTML-escaped text), `tokens`, `weights`, `eligible`, `decisive`
            (per-token lists, see [`render_weighted_html`]) and `reference` (the teacher's reference text).
        title (`str`): page title.
        cap (`float`): `credit_cap` (strongest shade).
        intro (`str`, *optional*): a paragraph of text under the title (escaped).
    """
    stops = [1.0 + (cap - 1.0) * k / 4 for k in range(5)]
    cells = "".join(f'<span style="background:rgb{weight_color(w, cap=cap)}">W={w:.2f}</span>' for w in stops)
    legend = (
        f'<p class="legend">Weight: {cells} <span style="{_INELIGIBLE_STYLE}">not eligible</span> '
        f'<span style="{_DECISIVE_STYLE.lstrip(";")}">decisive (ground truth)</span></p>'
    )
    cards = []
    for item in items:
        body = render_weighted_html(
            item["tokens"], item["weights"], item["eligible"], cap=cap, decisive=item["decisive"]
        )
        cards.append(
            f'<div class="row"><div class="meta">{html.escape(item["meta"])}</div><div class="pair">'
            f"<div><h3>completion (shaded by W)</h3>{body}</div>"
            f"<div><h3>credit reference (teacher context)</h3><pre>{html.escape(item['reference'])}</pre></div>"
            "</div></div>"
        )
    e = html.escape
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{_PAGE_CSS}{_SIDE_CSS}</style></head><body><h1>{e(title)}</h1>"
        + (f"<p>{e(intro)}</p>" if intro else "")
        + f"{legend}\n"
        + "\n".join(cards)
        + "\n</body></html>\n"
    )
