"""Sibling groups: binary success predicate, mixed test, grouping, and the pure cross-rank helpers."""

import math

import pytest
import torch

from trl_sgcd.credit.siblings import (
    Rollout,
    SiblingGroup,
    build_sibling_groups,
    gather_for_groups,
    is_mixed,
    local_rows,
    owner_of_group,
    success_mask,
)


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


def test_local_rows_matches_process_slice():
    assert local_rows(0, 4) == slice(0, 4)
    assert local_rows(3, 4) == slice(12, 16)
    assert list(range(16))[local_rows(2, 4)] == [8, 9, 10, 11]


def test_owner_of_group_is_round_robin():
    assert [owner_of_group(g, 3) for g in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert {owner_of_group(g, 1) for g in range(5)} == {0}
    with pytest.raises(ValueError):
        owner_of_group(0, 0)


def test_cross_rank_round_trip():
    # 2 ranks x 3 rollouts, G = 2: group 1 spans both ranks.
    num_processes, local_size, num_generations = 2, 3, 2
    per_rank_rewards = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    rewards = gather_for_groups(per_rank_rewards)
    assert rewards == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    prompts, completions, rows = _batch(rewards, num_generations)
    groups = build_sibling_groups(
        prompts, completions, rewards, rows, num_generations=num_generations, success_threshold=1.0
    )
    owned = [
        [g.group_index for g in groups if owner_of_group(g.group_index, num_processes) == rank]
        for rank in range(num_processes)
    ]
    assert sorted(gather_for_groups(owned)) == [0, 1, 2]  # every group is built exactly once
    # Per-row values computed on the gathered batch slice back to each rank.
    per_row = [g.group_index for g in groups for _ in g.rollouts]
    assert [per_row[local_rows(rank, local_size)] for rank in range(num_processes)] == [[0, 0, 1], [1, 2, 2]]
