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
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Rollout:
    """
    One policy rollout as seen by the credit pipeline.

    Args:
        index (`int`):
            Row of the rollout in the (gathered) generation batch.
        prompt (`str` or `list[dict]`):
            The task prompt: a plain string or a list of chat messages.
        completion (`str` or `list[dict]`):
            The generated completion: a plain string or a list of messages (assistant turns, tool calls, tool
            observations).
        reward (`float`):
            Total verifier reward (NaN when unscorable).
        row (`dict`, *optional*):
            The other dataset columns of this rollout's example (e.g. `task_id`, `gold_answer`).
    """

    index: int
    prompt: Any
    completion: Any
    reward: float
    row: dict = field(default_factory=dict)


@dataclass
class SiblingGroup:
    """
    The `num_generations` rollouts sampled for one prompt, with their binary outcomes.

    Args:
        group_index (`int`):
            Index g of the group; its rollouts are rows `[g * G, (g + 1) * G)` of the gathered batch.
        rollouts (`list[Rollout]`):
            The sibling rollouts, in batch order.
        success (`list[bool]`):
            Outcome of each rollout (`reward >= threshold`).
    """

    group_index: int
    rollouts: list[Rollout]
    success: list[bool]

    @property
    def is_mixed(self) -> bool:
        """Whether the group holds at least one success and at least one failure."""
        return is_mixed(self.success)

    @property
    def num_success(self) -> int:
        """Number of successful siblings."""
        return sum(bool(s) for s in self.success)

    @property
    def prompt(self) -> Any:
        """The shared task prompt (that of the first rollout)."""
        return self.rollouts[0].prompt if self.rollouts else None


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


def sibling_contexts(group: SiblingGroup, *, private_columns: Sequence[str], observation_max_chars: int) -> list:
    """Teacher context per rollout for the sibling-context modes (`no_reference`, `sdpo`): a raw successful sibling
    other than the rollout itself, sanitized, no LLM.

    A rollout is never shown its own completion (the teacher would then hold the answer it is scoring): a failed
    rollout gets the shortest successful sibling, a successful one the shortest *other* success, and a lone success
    gets no teacher (`None`), as in SDPO's reference code (`dont_reprompt_on_self_success`). Ties go to the lowest row
    index, so the choice is deterministic.

    Args:
        group ([`SiblingGroup`]):
            The group; its rollouts' `row` dicts hold the private values.
        private_columns (`Sequence[str]`):
            Columns whose values are masked in the rendered sibling.
        observation_max_chars (`int`):
            Tool observations are truncated to this many characters (after sanitizing).

    Returns:
        `list[CreditReference | None]`: one entry per rollout of the group, in order.
    """
    from trl_sgcd.credit.evidence import render_sanitized_trace
    from trl_sgcd.credit.reference import CreditReference
    from trl_sgcd.credit.sanitize import Sanitizer, private_values

    successes = [r for r, ok in zip(group.rollouts, group.success) if ok]
    if not successes:
        return [None] * len(group.rollouts)
    sanitizer = Sanitizer([private_values(r.row, private_columns) for r in group.rollouts])
    # Sanitize each step before truncating it, so a secret cut in half by the truncation cannot leak.
    rendered = {
        r.index: render_sanitized_trace(r.completion, sanitizer=sanitizer, max_observation_chars=observation_max_chars)
        for r in successes
    }
    ranked = sorted(rendered, key=lambda index: (len(rendered[index].text), index))  # shortest first
    contexts = []
    for rollout in group.rollouts:
        chosen = next((index for index in ranked if index != rollout.index), None)
        if chosen is None:
            contexts.append(None)
            continue
        clean = rendered[chosen]
        contexts.append(
            CreditReference(
                text="A successful attempt at this same task:\n" + clean.text,
                sections={},
                masked_literals=list(clean.masked),
                source="sibling",
                group_index=group.group_index,
            )
        )
    return contexts
