"""Pure batch-level helpers: rewards, validity checks, metrics, dynamic-sampling selection and merging."""

import math

import pytest
import torch

from trl_sgcd.credit.sampling import merge_outputs, select_groups
from trl_sgcd.credit.stats import (
    CreditStats,
    count_spans,
    credit_metrics,
    group_needs_teacher,
    masked_row_mean,
    total_rewards,
    validity_problems,
)


def _stats(**sums):
    s = CreditStats(dict.fromkeys(CreditStats.SUM_KEYS, 0.0), dict.fromkeys(CreditStats.MAX_KEYS, 0.0))
    s.sums.update(sums)
    return s


def test_total_rewards_weighted_and_nan_when_all_none():
    per_func = torch.tensor([[1.0, 0.5], [float("nan"), 1.0], [float("nan"), float("nan")]])
    r = total_rewards(per_func, torch.tensor([1.0, 2.0]))
    assert r[0] == 2.0 and r[1] == 2.0 and math.isnan(r[2])


def test_group_needs_teacher():
    assert group_needs_teacher("sgcd", 1, 4) and not group_needs_teacher("sgcd", 0, 4)
    assert not group_needs_teacher("sgcd", 4, 4)
    assert group_needs_teacher("sdpo", 4, 4) and not group_needs_teacher("sdpo", 0, 4)


def test_validity_checks():
    zero = _stats(rows_scored=2, scored_tokens=10)
    problems, _ = validity_problems(
        zero, mode="sgcd", num_mixed=1, weights_require_grad=False, inert_steps=0, inert_limit=10
    )
    assert any("all zero" in p for p in problems)
    leaky = _stats(tool_tokens_in_mask=3)
    problems, _ = validity_problems(
        leaky, mode="sgcd", num_mixed=0, weights_require_grad=True, inert_steps=0, inert_limit=10
    )
    assert any("tool-observation" in p for p in problems) and any("require grad" in p for p in problems)
    inert = 0
    for _ in range(3):
        problems, inert = validity_problems(
            _stats(), mode="sgcd", num_mixed=2, weights_require_grad=False, inert_steps=inert, inert_limit=3
        )
    assert inert == 3 and any("inert" in p for p in problems)
    problems, inert = validity_problems(
        _stats(credit_tokens=5), mode="sgcd", num_mixed=2, weights_require_grad=False, inert_steps=inert, inert_limit=3
    )
    assert inert == 0 and not problems


def test_metrics_do_not_report_unknown_cost_as_zero():
    stats = _stats(scored_tokens=4, credit_tokens=2, weight=6)
    m = credit_metrics(
        stats,
        num_groups=4,
        num_mixed=2,
        sources={"contrast": 2},
        latency_s=0.1,
        cost_usd=None,
        resample_rounds=1,
        fallback_prefix=0,
    )
    assert "sgcd/reference_cost_usd" not in m
    assert m["sgcd/mixed_group_fraction"] == 0.5 and m["sgcd/credit_token_fraction"] == 0.5
    assert m["sgcd/reference_coverage"] == 1.0 and m["sgcd/weight_mean"] == 1.5


def test_count_spans_and_masked_mean():
    s = torch.tensor([[0.0, 0.5, 0.5, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    assert count_spans(s) == 3
    values = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    mask = torch.tensor([[1, 0], [0, 0]])
    assert masked_row_mean(values, mask).tolist() == [1.0, 0.0]


def test_select_groups_prefers_mixed_then_first_round():
    chosen = select_groups([[False, False], [True, False], [False, True]], 2)
    assert chosen == [(1, 0), (2, 1)]
    assert select_groups([[False, True]], 2) == [(0, 1), (0, 0)]
    with pytest.raises(ValueError):
        select_groups([[True]], 2)


def test_merge_outputs_repads_rows():
    a = {
        "prompt_ids": torch.tensor([[9, 1, 2]]),
        "prompt_mask": torch.tensor([[0, 1, 1]]),
        "completion_ids": torch.tensor([[5, 9]]),
        "completion_mask": torch.tensor([[1, 0]]),
        "tool_mask": torch.tensor([[1, 1]]),
        "advantages": torch.tensor([0.5]),
        "num_items_in_batch": 1,
    }
    b = {
        "prompt_ids": torch.tensor([[3]]),
        "prompt_mask": torch.tensor([[1]]),
        "completion_ids": torch.tensor([[6, 7, 8]]),
        "completion_mask": torch.tensor([[1, 1, 1]]),
        "tool_mask": torch.tensor([[1, 0, 1]]),
        "advantages": torch.tensor([-1.0]),
        "num_items_in_batch": 3,
    }
    m = merge_outputs([a, b], [[0], [0]], pad_token_id=9)
    assert m["prompt_ids"].tolist() == [[9, 1, 2], [9, 9, 3]]  # left padded
    assert m["prompt_mask"].tolist() == [[0, 1, 1], [0, 0, 1]]
    assert m["completion_ids"].tolist() == [[5, 9, 9], [6, 7, 8]]  # right padded
    assert m["tool_mask"].tolist() == [[1, 1, 1], [1, 0, 1]]  # TRL pads tool_mask with 1
    assert m["advantages"].tolist() == [0.5, -1.0] and "num_items_in_batch" not in m
    with pytest.raises(ValueError, match="pixel_values"):
        merge_outputs([{**a, "pixel_values": torch.zeros(1, 3)}], [[0]], pad_token_id=9)
