"""Sibling groups: cut a generation batch into groups of `num_generations` rollouts of one prompt.

A group is *mixed* when it holds both a verified success and a failure (paper eq. 1: 0 < #success < G). Success is a
binary predicate on the reward (`reward >= threshold`), never on the reward's standard deviation: filtering on
shaped-reward variance destroyed policies in practice. NaN rewards (unscorable rollouts) are never a
success.

Everything here is a pure function over lists, so it is testable without processes; the trainer feeds it what
accelerate's `gather_object` returns and broadcasts the references built by each group's owner rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trl_sgcd.credit.types import Rollout, SiblingGroup


def _to_floats(rewards) -> list[float]:
    if hasattr(rewards, "detach"):  # torch.Tensor without importing torch
        rewards = rewards.detach().float().cpu().reshape(-1).tolist()
    return [float(r) for r in rewards]


def success_mask(rewards, threshold: float) -> list[bool]:
    """
    Binary success predicate on total rewards.

    Args:
        rewards (`torch.Tensor` or `list[float]`):
            One total reward per rollout; NaN marks an unscorable rollout.
        threshold (`float`):
            A rollout succeeds when its reward is `>= threshold`.

    Returns:
        `list[bool]`: one outcome per rollout. NaN is never a success.
    """
    return [(not math.isnan(r)) and r >= threshold for r in _to_floats(rewards)]


def is_mixed(success: Sequence[bool]) -> bool:
    """Whether `0 < #success < G` (paper eq. 1)."""
    num_success = sum(bool(s) for s in success)
    return 0 < num_success < len(success)


def build_sibling_groups(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    rewards,
    rows: Sequence[dict] | None,
    *,
    num_generations: int,
    success_threshold: float,
) -> list[SiblingGroup]:
    """
    Cut a gathered generation batch into sibling groups.

    Args:
        prompts (`Sequence`):
            One prompt per rollout (rows of group g are `[g * G, (g + 1) * G)`).
        completions (`Sequence`):
            One completion per rollout.
        rewards (`torch.Tensor` or `list[float]`):
            One total reward per rollout.
        rows (`Sequence[dict]` or `None`):
            The other dataset columns per rollout; `None` gives empty rows.
        num_generations (`int`):
            Group size G.
        success_threshold (`float`):
            Success predicate threshold (see [`success_mask`]).

    Returns:
        `list[SiblingGroup]`: the groups in batch order (mixed or not).
    """
    if num_generations < 1:
        raise ValueError(f"num_generations={num_generations} must be >= 1.")
    reward_list = _to_floats(rewards)
    rows = list(rows) if rows is not None else [{} for _ in prompts]
    lengths = {
        "prompts": len(prompts),
        "completions": len(completions),
        "rewards": len(reward_list),
        "rows": len(rows),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"build_sibling_groups needs one entry per rollout in every input; got lengths {lengths}.")
    total = len(reward_list)
    if total % num_generations != 0:
        raise ValueError(
            f"The batch holds {total} rollouts, which is not divisible by num_generations={num_generations}; "
            "sibling groups must be complete (gather rollouts across ranks before grouping)."
        )
    success = success_mask(reward_list, success_threshold)
    groups = []
    for g in range(total // num_generations):
        span = range(g * num_generations, (g + 1) * num_generations)
        rollouts = [Rollout(i, prompts[i], completions[i], reward_list[i], dict(rows[i] or {})) for i in span]
        groups.append(SiblingGroup(group_index=g, rollouts=rollouts, success=[success[i] for i in span]))
    return groups


def owner_of_group(group_index: int, num_processes: int) -> int:
    """Rank that builds the credit reference of a group: round-robin over processes."""
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be >= 1.")
    return group_index % num_processes
