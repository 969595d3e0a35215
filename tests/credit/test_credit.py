"""Pure batch-level helpers: rewards, validity checks, metrics, dynamic-sampling selection and merging."""

import math

import pytest
import torch

from trl_sgcd.credit.modes import MODES, credit_mode
from trl_sgcd.credit.stats import (
    CreditStats,
    check_validity,
    count_spans,
    credit_metrics,
    has_tool_call,
    inert_reason,
    masked_row_mean,
    total_rewards,
    validity_problems,
)
from trl_sgcd.credit.types import CreditReference
from trl_sgcd.sampling import ResampleStream, keep_resampling, merge_outputs, resample_metrics, select_groups


def _stats(**sums):
    s = CreditStats(dict.fromkeys(CreditStats.SUM_KEYS, 0.0), dict.fromkeys(CreditStats.MAX_KEYS, 0.0))
    s.sums.update(sums)
    return s


def test_total_rewards_weighted_and_nan_when_all_none():
    per_func = torch.tensor([[1.0, 0.5], [float("nan"), 1.0], [float("nan"), float("nan")]])
    r = total_rewards(per_func, torch.tensor([1.0, 2.0]))
    assert r[0] == 2.0 and r[1] == 2.0 and math.isnan(r[2])


def test_sdpos_sampled_token_variant_is_a_record_of_the_mode_table():
    from types import SimpleNamespace

    from trl_sgcd.credit.modes import SDPO_SAMPLED_TOKEN, credit_mode_of

    topk = credit_mode_of(SimpleNamespace(credit_mode="sdpo", credit_sdpo_distillation_mode="topk_logits"))
    sampled = credit_mode_of(SimpleNamespace(credit_mode="sdpo", credit_sdpo_distillation_mode="sampled_token"))
    assert topk is credit_mode("sdpo") and topk.extra_loss == "sdpo" and topk.teacher_targets
    assert sampled is SDPO_SAMPLED_TOKEN and sampled.extra_loss is None and not sampled.teacher_targets
    assert sampled.advantage == "sdpo_sampled_token" and sampled.context == topk.context == "sibling"
    sgcd = SimpleNamespace(credit_mode="sgcd", credit_sdpo_distillation_mode="sampled_token")
    assert credit_mode_of(sgcd) is credit_mode("sgcd")


def test_mode_table_decides_who_gets_a_teacher():
    assert credit_mode("sgcd").group_gets_teacher(1, 4) and not credit_mode("sgcd").group_gets_teacher(0, 4)
    assert not credit_mode("sgcd").group_gets_teacher(4, 4)
    assert credit_mode("sdpo").group_gets_teacher(4, 4) and not credit_mode("sdpo").group_gets_teacher(0, 4)
    assert not credit_mode("off").scores and not credit_mode("off").group_gets_teacher(2, 4)
    assert [m.name for m in MODES.values() if m.context == "sibling"] == ["no_reference", "sdpo"]
    assert [m.name for m in MODES.values() if m.weights_carry_credit] == ["sgcd", "no_reference", "uniform"]
    with pytest.raises(ValueError, match="credit_mode='nope'"):
        credit_mode("nope")
    with pytest.raises(ValueError, match="context"):
        type(MODES["sgcd"])("x", "mixed", "oracle", "none", "grpo", None, "")


def test_validity_checks():
    common = dict(weights_carry_credit=True, weights_require_grad=False, inert_limit=10)
    zero = _stats(rows_scored=2, scored_tokens=10)
    problems, _ = validity_problems(zero, num_mixed=1, inert_steps=0, **common)
    assert any("all zero" in p for p in problems)
    leaky = _stats(weights_off_loss_mask=3)
    problems, _ = validity_problems(leaky, num_mixed=0, inert_steps=0, **{**common, "weights_require_grad": True})
    assert any("outside TRL's loss mask" in p for p in problems) and any("require grad" in p for p in problems)
    inert = 0
    for _ in range(3):
        problems, inert = validity_problems(_stats(), num_mixed=2, inert_steps=inert, **{**common, "inert_limit": 3})
    assert inert == 3 and any("inert" in p for p in problems)
    inert_message = next(p for p in problems if "inert" in p)
    for fix in ("warm start", "scripted_sibling=", "credit_dynamic_sampling=True"):
        assert fix in inert_message
    problems, inert = validity_problems(
        _stats(credit_tokens=5), num_mixed=2, inert_steps=inert, **{**common, "inert_limit": 3}
    )
    assert inert == 0 and not problems
    # A mode whose weights are W = 1 by design (direct_sd, sdpo) is never "inert".
    problems, inert = validity_problems(
        _stats(), num_mixed=2, inert_steps=9, **{**common, "weights_carry_credit": False}
    )
    assert not problems


def test_check_validity_warns_or_raises_when_strict():
    leaky = _stats(weights_off_loss_mask=2)
    kwargs = dict(weights_carry_credit=True, num_mixed=0, weights_require_grad=False, inert_steps=0, inert_limit=10)
    with pytest.warns(UserWarning, match="outside TRL's loss mask"):
        assert check_validity(leaky, strict=False, **kwargs) == 0
    with pytest.raises(RuntimeError, match="credit_strict=True"):
        check_validity(leaky, strict=True, **kwargs)


def test_inert_reason_says_why_credit_changed_nothing():
    def why(stats, num_mixed=2, tool_calls=True, weights_carry_credit=True):
        return inert_reason(
            stats, num_mixed=num_mixed, tool_calls=tool_calls, weights_carry_credit=weights_carry_credit
        )

    assert why(_stats(), num_mixed=0).startswith("no mixed group this step")
    assert why(_stats(credit_tokens=5, rows_scored=4), num_mixed=0).startswith("no mixed group")
    assert why(_stats(), tool_calls=False).startswith("mixed groups but no tool call in any rollout")
    assert why(_stats()).startswith("mixed groups but no rollout was scored")
    below = why(_stats(rows_scored=4, scored_tokens=40))
    assert below.startswith("mixed groups scored but the divergence stayed below credit_min_divergence")
    assert "W = 1 everywhere" in below
    # Credit acted: no line. Without tools (`None`) the reason is never "no tool call".
    assert why(_stats(rows_scored=4, scored_tokens=40, credit_tokens=3)) is None
    assert why(_stats(rows_scored=4, scored_tokens=40), tool_calls=None).startswith("mixed groups scored")
    # A mode whose weights are W = 1 by design acted when it scored rows against a teacher.
    assert why(_stats(rows_scored=4, scored_tokens=40), weights_carry_credit=False) is None
    assert has_tool_call([{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}])
    assert not has_tool_call([{"role": "assistant", "content": "hi"}]) and not has_tool_call("text")


def test_metrics_do_not_report_unknown_cost_as_zero():
    stats = _stats(scored_tokens=4, credit_tokens=2, weight=6)
    m = credit_metrics(
        stats,
        num_groups=4,
        num_mixed=2,
        references=[CreditReference("r", {}, [], "contrast", group_index=g) for g in (0, 0, 1)],  # two groups
        latency_s=0.1,
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


def test_dynamic_sampling_rule_and_metrics():
    assert keep_resampling(0.5, 0, min_mixed_fraction=1.0, max_rounds=2)
    assert not keep_resampling(0.5, 2, min_mixed_fraction=1.0, max_rounds=2)  # round limit: fill the rest
    assert not keep_resampling(1.0, 0, min_mixed_fraction=1.0, max_rounds=2)
    m = resample_metrics(rounds=2, num_groups=4, kept_mixed=3, generated_groups=12)
    assert m == {
        "sgcd/resample/rounds": 2.0,
        "sgcd/resample/mixed_fraction": 0.75,
        "sgcd/resample/non_mixed_filled": 1.0,
        "sgcd/resample/generated_groups": 12.0,
    }


def test_resample_stream_resumes_at_the_same_position():
    def loader(epoch):
        return [f"e{epoch}b{i}" for i in range(3)]

    straight = ResampleStream(loader)
    drawn = [straight.next() for _ in range(5)]
    assert drawn == ["e1b0", "e1b1", "e1b2", "e2b0", "e2b1"]
    resumed = ResampleStream(loader)
    first = ResampleStream(loader)
    [first.next() for _ in range(4)]
    resumed.load_state_dict(first.state_dict())
    assert first.state_dict() == {"epoch": 2, "consumed": 1}
    assert resumed.next() == drawn[4]
