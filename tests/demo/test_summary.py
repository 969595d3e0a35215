"""The demo's summary, credit table and rollout panel, from recorded step data (no model)."""

import pytest

from trl_sgcd.demo.credit_view import pick_rollout, write_credit_table
from trl_sgcd.demo.plots import layout_tokens, plot_demo
from trl_sgcd.demo.summary import format_summary, plural, step_line

# Two logged steps shaped like a real `--quick` run: step 1 drew 3 groups in 3 rounds and none was mixed; step 2 had
# its one group mixed, 351 of its 514 scored tokens above 1.
LOG = [
    {"step": 1, "reward": 0.0, "loss": 0.0, "sgcd/mixed_group_fraction": 0.0, "sgcd/credit_tokens": 0.0}
    | {"sgcd/scored_tokens": 0.0, "sgcd/resample/rounds": 3.0, "sgcd/resample/generated_groups": 3.0},
    {"step": 2, "reward": 0.5, "loss": 0.1, "sgcd/mixed_group_fraction": 1.0, "sgcd/credit_tokens": 351.0}
    | {"sgcd/scored_tokens": 514.0, "sgcd/resample/rounds": 1.0, "sgcd/resample/generated_groups": 1.0},
    {"train_runtime": 9.0, "step": 2},
]


def _eval(pass1):
    return {
        "pass@1": pass1,
        "num_tasks": 1,
        "per_category": {"action": {"pass@1": pass1, "num_tasks": 1}},
        "audit": {"zero_tool_success_share": 0.0, "tools_per_success": 1.0, "tool_failure_rate": 0.0},
    }


def _metrics(log=LOG, mode="sgcd"):
    return {
        "config": {"credit_mode": mode, "rollouts_per_step": 4, "num_generations": 4},
        "before": _eval(0.0),
        "after": _eval(1.0),
        "training": {"log_history": log, "credit_localization": None},
        "wall_s": {"rl": 3.0, "total": 6.0},
    }


def test_plurals():
    assert [plural(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
    assert plural(1.0, "group") == "1 group"


def test_one_line_per_step_says_what_credit_did():
    assert step_line(LOG[0], groups_per_step=1, credit_mode="sgcd") == (
        "step 1: no mixed group (3 groups drawn in 3 rounds), so no credit; train reward 0.00"
    )
    assert step_line(LOG[1], groups_per_step=1, credit_mode="sgcd") == (
        "step 2: 1 of 1 group mixed, 351 of 514 scored tokens weighted above 1; train reward 0.50"
    )
    off = step_line(LOG[1], groups_per_step=1, credit_mode="off")
    assert "weighted" not in off and "1 of 1 group mixed" in off


def test_summary_blocks_define_each_figure_once():
    text = format_summary(_metrics())
    blocks = text.split("\n\n")
    table, training, lift = blocks[0], blocks[1], blocks[2]
    assert "pass@1, all 1 task" in table and "credit lift" not in table and "train reward" not in table
    assert training.splitlines()[0].startswith("sgcd training: 2 steps x 1 task x 4 rollouts")
    assert "  all steps: 351 of 514 scored tokens weighted above 1" in training
    assert lift.startswith("credit lift") and blocks[-1].startswith("wall time")
    assert "(first)" not in text and "(mean)" not in text and "1 tasks" not in text
    assert "credit lift" not in format_summary(_metrics(mode="off"))


def _view(weights, eligible, advantage, step=2):
    n = len(weights)
    return {
        "step": step,
        "weights": [1.0] * n,
        "localization": None,
        "view": {
            "tokens": [f"t{i} " for i in range(n)],
            "weights": weights,
            "eligible": eligible,
            "decisive": [i == 1 for i in range(n)],
            "advantage": advantage,
            "reference": "ref <b>",
        },
    }


def test_credit_table_and_the_rollout_the_figure_shows(tmp_path):
    failure = _view([2.0, 2.0, 2.0], [True] * 3, -0.5)
    success = _view([1.0, 1.7, 1.0], [True, True, False], 0.5)
    log = [{"step": 2, "rows": [failure, success]}]
    chosen = pick_rollout(log)
    assert chosen["advantage"] == 0.5 and chosen["step"] == 2  # a success with credit beats a failure with more
    assert pick_rollout([]) is None and write_credit_table([], str(tmp_path / "none.html"), cap=2.0) is None
    path = write_credit_table(log, str(tmp_path / "credit_table.html"), cap=2.0)
    page = open(path, encoding="utf-8").read()
    assert page.count('class="row"') == 2 and "clip(1 + gamma*s, 1, c)" in page and "ref &lt;b&gt;" in page
    assert "1 of 2 eligible tokens weighted above 1" in page and "advantage +0.50 (success)" in page


def test_layout_tokens_wraps_and_breaks_lines():
    pieces = layout_tokens(["ab", "cd\nef", "ghijk"], columns=4)
    assert pieces == [(0, 0, "ab", 0), (0, 2, "cd", 1), (1, 0, "ef", 1), (1, 2, "gh", 2), (2, 0, "ijk", 2)]


@pytest.mark.parametrize("rollout", [True, False])
def test_plot_has_the_rollout_panel(tmp_path, rollout, monkeypatch):
    from trl_sgcd.demo import plots

    view = None
    if rollout:
        view = dict(_view([1.0, 1.5, 2.0, 1.0] * 60, [True, True, True, False] * 60, 0.5)["view"], step=2)
        view["tokens"][5] = "cost $5\n"  # a dollar sign is text, not mathtext
    drawn = []
    real_panel = plots._rollout_panel
    monkeypatch.setattr(plots, "_rollout_panel", lambda ax, v, cap: drawn.append(v) or real_panel(ax, v, cap))
    path = plot_demo(_metrics(), str(tmp_path / "demo.png"), weights=[1.0, 1.5, 2.0], cap=2.0, rollout=view)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert drawn == [view]  # the bottom panel shows the chosen rollout (or says none was scored)


def test_rollout_panel_shades_the_credited_tokens_and_explains_w():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trl_sgcd.demo.plots import _rollout_panel

    fig = Figure(figsize=(15, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    view = dict(_view([1.0, 1.5, 2.0, 1.0], [True, True, True, False], 0.5)["view"], step=2)
    _rollout_panel(ax, view, 2.0)
    texts = [t.get_text() for t in ax.texts]
    assert "".join(texts[:4]) == "t0 t1 t2 t3 "
    shaded = [p.get_facecolor()[:3] for p in ax.patches]
    assert len(shaded) == 3  # W = 1.5 and W = 2 (red shades), and the ineligible token (grey)
    assert shaded[1] == pytest.approx((214 / 255, 39 / 255, 40 / 255))  # W = c: the strongest shade
    assert "2 of 3 eligible tokens weighted above 1" in ax.get_title() and "a success" in ax.get_title()
    assert any("W = clip(1 + gamma*s, 1, c)" in t and "the cap" in t for t in texts)
    assert len(ax.lines) == 1  # the decisive token is underlined
