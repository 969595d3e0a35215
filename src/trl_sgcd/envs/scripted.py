"""A scripted sibling for the fast path: mixed groups from a model that never succeeds. Never for real training.

SGCD only acts on sibling groups with mixed outcomes (0 < #success < G). A random test model never solves an airline
task, so with the real verifier every group fails, no reference is built and every weight stays 1: a newcomer running
the tiny recipe would see nothing happen. `scripted_sibling_reward` is the airline reward except that the FIRST
rollout of each task in the batch counts as a success, as if one scripted sibling had solved it. Groups become mixed
(unless all siblings really succeed, e.g. a refusal task), the credit pipeline runs end to end, and `credit_tokens`
is above 0 within a step with a model whose predictions depend on the context (`builtin:tiny-context`).

The "success" is scripted, so the reference is built from a sibling that did not solve anything: this shows the
mechanism, not the method's value. `benchmarks/bench_credit.py` measures where credit lands with real outcomes.
"""

from __future__ import annotations

from trl_sgcd.envs.airline import airline_reward


def scripted_sibling_reward(completions: list, environments: list | None = None, task_id=None, **kwargs) -> list:
    """`airline_reward`, with the first rollout of each `task_id` in the batch scored 1.0 (see the module docstring).

    Args:
        completions (`list`): completions as TRL passes them.
        environments (`list[AirlineEnv]`): the environment of each rollout.
        task_id (`list[str]`): the dataset column; rollouts of one group share it.

    Returns:
        `list[float]`: one reward per completion.
    """
    rewards = airline_reward(completions, environments=environments)
    if task_id is None:
        raise ValueError("scripted_sibling_reward needs the `task_id` column of make_airline_dataset.")
    seen = set()
    for i, tid in enumerate(task_id):
        if tid not in seen:
            seen.add(tid)
            rewards[i] = 1.0
    return rewards
