"""Sibling groups: binary success predicate, mixed test, grouping, ownership, and the sibling teacher contexts."""

import math

import pytest
import torch

from trl_sgcd.credit.reference.builder import sibling_contexts
from trl_sgcd.credit.siblings import build_sibling_groups, is_mixed, owner_of_group, success_mask
from trl_sgcd.credit.types import Rollout, SiblingGroup


def _batch(rewards, num_generations):
    n = len(rewards)
    prompts = [f"prompt {i // num_generations}" for i in range(n)]
    completions = [f"completion {i}" for i in range(n)]
    rows = [{"task_id": i // num_generations} for i in range(n)]
    return prompts, completions, rows


def test_success_mask_threshold_is_inclusive():
    assert success_mask([0.99, 1.0, 1.5, 0.0], threshold=1.0) == [False, True, True, False]
    assert success_mask(torch.tensor([0.5, 0.49]), threshold=0.5) == [True, False]


def test_success_mask_nan_is_never_success():
    assert success_mask([math.nan, 1.0], threshold=0.0) == [False, True]
    assert success_mask(torch.tensor([float("nan")]), threshold=-math.inf) == [False]


def test_success_is_not_reward_variance():
    # Shaped rewards with spread but all below the threshold: no success, so not mixed (std would say "informative").
    rewards = [0.1, 0.4, 0.7, 0.9]
    assert not is_mixed(success_mask(rewards, threshold=1.0))
    # Equal rewards (zero std) that pass the threshold are all successes.
    assert success_mask([1.0, 1.0], threshold=1.0) == [True, True]


def test_is_mixed():
    assert is_mixed([True, False])
    assert not is_mixed([True, True, True])
    assert not is_mixed([False, False])
    assert not is_mixed([])


def test_build_sibling_groups_cuts_rows_in_order():
    rewards = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    prompts, completions, rows = _batch(rewards, 2)
    groups = build_sibling_groups(
        prompts, completions, torch.tensor(rewards), rows, num_generations=2, success_threshold=1.0
    )
    assert [g.group_index for g in groups] == [0, 1, 2]
    assert [[r.index for r in g.rollouts] for g in groups] == [[0, 1], [2, 3], [4, 5]]
    assert [g.is_mixed for g in groups] == [True, False, False]
    assert [g.num_success for g in groups] == [1, 2, 0]
    assert groups[1].prompt == "prompt 1"
    assert groups[2].rollouts[1].completion == "completion 5"
    assert groups[2].rollouts[0].row == {"task_id": 2}


def test_build_sibling_groups_with_nan_rewards():
    rewards = [math.nan, 1.0, math.nan, math.nan]
    prompts, completions, rows = _batch(rewards, 2)
    groups = build_sibling_groups(prompts, completions, rewards, rows, num_generations=2, success_threshold=0.5)
    assert groups[0].success == [False, True] and groups[0].is_mixed
    assert groups[1].success == [False, False] and not groups[1].is_mixed
    assert math.isnan(groups[0].rollouts[0].reward)


def test_build_sibling_groups_rows_may_be_none():
    groups = build_sibling_groups(["p", "p"], ["a", "b"], [1.0, 0.0], None, num_generations=2, success_threshold=1.0)
    assert groups[0].rollouts[0].row == {}


def test_build_sibling_groups_rejects_incomplete_groups():
    prompts, completions, rows = _batch([1.0] * 5, 2)
    with pytest.raises(ValueError, match="not divisible by num_generations=2"):
        build_sibling_groups(prompts, completions, [1.0] * 5, rows, num_generations=2, success_threshold=1.0)


def test_build_sibling_groups_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one entry per rollout"):
        build_sibling_groups(["p"] * 4, ["c"] * 3, [1.0] * 4, None, num_generations=2, success_threshold=1.0)


def test_sibling_group_properties_on_dataclass():
    group = SiblingGroup(0, [Rollout(0, "p", "a", 1.0), Rollout(1, "p", "b", 0.0)], [True, False])
    assert group.is_mixed and group.num_success == 1 and group.prompt == "p"


def test_owner_of_group_is_round_robin():
    assert [owner_of_group(g, 3) for g in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert {owner_of_group(g, 1) for g in range(5)} == {0}
    with pytest.raises(ValueError):
        owner_of_group(0, 0)


def test_cross_rank_ownership_builds_every_group_once():
    # 2 ranks x 3 rollouts, G = 2: group 1 spans both ranks; each group has exactly one owner.
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    prompts, completions, rows = _batch(rewards, 2)
    groups = build_sibling_groups(prompts, completions, rewards, rows, num_generations=2, success_threshold=1.0)
    owned = [[g.group_index for g in groups if owner_of_group(g.group_index, 2) == rank] for rank in range(2)]
    assert sorted(owned[0] + owned[1]) == [0, 1, 2]


def _trace(text: str, secret: str = "") -> list[dict]:
    return [{"role": "assistant", "content": f"{text} {secret}".strip()}]


def test_sibling_contexts_never_show_a_row_its_own_completion():
    # Group of 4: rows 0 and 2 succeed (row 2 is the shorter), rows 1 and 3 fail; a second group has one success.
    completions = [_trace("long successful route " * 3), _trace("failed"), _trace("short win"), _trace("failed too")]
    completions += [_trace("lone win"), _trace("miss"), _trace("miss"), _trace("miss")]
    rewards = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    groups = build_sibling_groups(["task"] * 8, completions, rewards, None, num_generations=4, success_threshold=1.0)
    first = sibling_contexts(groups[0], private_columns=[], observation_max_chars=512)
    assert "short win" in first[0].text and "long successful" not in first[0].text  # the other success, not itself
    assert "long successful" in first[2].text and "short win" not in first[2].text
    assert all("short win" in first[i].text for i in (1, 3))  # failures get the shortest success
    assert {ref.source for ref in first} == {"sibling"} and {ref.group_index for ref in first} == {0}
    lone = sibling_contexts(groups[1], private_columns=[], observation_max_chars=512)
    assert lone[0] is None  # a lone success gets no teacher (SDPO's dont_reprompt_on_self_success)
    assert all("lone win" in ref.text for ref in lone[1:])
    no_success = SiblingGroup(9, groups[1].rollouts, [False] * 4)
    assert sibling_contexts(no_success, private_columns=[], observation_max_chars=512) == [None] * 4


def test_sibling_contexts_mask_private_values():
    completions = [_trace("win with", "ZX-4471"), _trace("fail"), _trace("win again with", "ZX-4471"), _trace("f")]
    rows = [{"gold": "ZX-4471"}] * 4
    groups = build_sibling_groups(["t"] * 4, completions, [1, 0, 1, 0], rows, num_generations=4, success_threshold=1)
    contexts = sibling_contexts(groups[0], private_columns=["gold"], observation_max_chars=512)
    assert all("ZX-4471" not in ref.text for ref in contexts)
    assert all("ZX-4471" in ref.masked_literals for ref in contexts)
