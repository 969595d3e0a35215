"""HTML rendering of credit weights: escaping, shading by weight, greyed ineligible tokens, underlined decisive
tokens, and the localization page."""

import re

import pytest

from trl_sgcd.credit.report import html as render
from trl_sgcd.credit.report.html import render_weighted_html, weight_color

SPAN_RE = re.compile(r'<span style="([^"]*)" title="W=([0-9.]+)[^"]*">')


def test_html_is_escaped_and_newlines_kept():
    tokens = ["<script>alert('x')</script>", " & ", '"q"', "\n", "line 2"]
    out = render_weighted_html(tokens, [1.0, 1.5, 2.0, 1.0, 1.0], [True] * 5, cap=2.0)
    assert "<script>" not in out and "</script>" not in out
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in out
    assert " &amp; " in out and "&quot;q&quot;" in out
    assert ">\n</span>" in out and "white-space:pre-wrap" in out  # newline kept, and displayed as one
    assert out.count("<span") == len(tokens) and out.count('title="W=') == len(tokens)
    assert "<link" not in out and "<style" not in out  # inline CSS only: self-contained


def test_shading_is_monotone_in_weight_and_capped():
    weights = [1.0, 1.1, 1.3, 1.6, 1.9, 2.0, 2.5]
    out = render_weighted_html([f"t{i}" for i in range(len(weights))], weights, [True] * len(weights), cap=2.0)
    assert '<span title="W=1.000">t0</span>' in out  # W = 1: no shading (white)
    shades = [
        tuple(map(int, re.search(r"rgb\((\d+),(\d+),(\d+)\)", style).groups())) for style, _ in SPAN_RE.findall(out)
    ]
    assert len(shades) == len(weights) - 1
    for lighter, darker in zip(shades, shades[1:]):
        assert all(a >= b for a, b in zip(lighter, darker)) and sum(lighter) >= sum(darker)
    assert shades[-2] == shades[-1] == render._STRONG_RGB  # W = cap and above: the strongest colour
    assert weight_color(1.0, cap=3.0) == (255, 255, 255)
    values = [sum(weight_color(1 + k / 10, cap=3.0)) for k in range(21)]
    assert values == sorted(values, reverse=True) and len(set(values)) == len(values)
    with pytest.raises(ValueError, match="cap"):
        weight_color(1.5, cap=1.0)


def test_ineligible_tokens_are_greyed_whatever_their_weight():
    out = render_weighted_html(["obs", "act"], [2.0, 2.0], [False, True], cap=2.0)
    obs, act = out.split("</span>")[:2]
    assert render._INELIGIBLE_STYLE in obs and "not eligible" in obs and "rgb(" not in obs
    assert "rgb(214,39,40)" in act
    with pytest.raises(ValueError, match="differ in length"):
        render_weighted_html(["a"], [1.0, 1.0], [True], cap=2.0)


def test_decisive_tokens_are_underlined():
    tokens, weights, eligible = ["a", "b", "c"], [1.0, 1.6, 1.0], [True, True, False]
    out = render_weighted_html(tokens, weights, eligible, cap=2.0, decisive=[False, True, True])
    spans = re.findall(r"<span[^>]*>", out)
    assert ["underline" in s for s in spans] == [False, True, True]
    assert "(decisive)" in spans[1] and "not eligible, decisive" in spans[2]
    assert out.replace(render._DECISIVE_STYLE, "").replace(", decisive", "").replace(" (decisive)", "") == (
        render_weighted_html(tokens, weights, eligible, cap=2.0)
    )
    with pytest.raises(ValueError, match="decisive"):
        render_weighted_html(tokens, weights, eligible, cap=2.0, decisive=[True])


def test_localization_page_puts_the_reference_beside_the_tokens():
    item = {
        "meta": "task 1 <x>",
        "tokens": ["id", "=", "A1"],
        "weights": [1.0, 1.0, 2.0],
        "eligible": [True, True, True],
        "decisive": [False, False, True],
        "reference": "check <state>",
    }
    page = render.localization_html_page([item], title="where credit lands", cap=2.0, intro="intro")
    assert page.count('class="pair"') == 1 and "check &lt;state&gt;" in page and "task 1 &lt;x&gt;" in page
    assert "underline" in page and 'title="W=2.000 (decisive)"' in page
