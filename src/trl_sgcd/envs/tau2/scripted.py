"""The τ² scripted sibling: `SGCDTrainer(..., scripted_sibling=tau2_expert_script)`.

The mechanism (one public way for every environment) is `trl_sgcd.envs.scripted`: the last rollout of each group is
replaced, right after generation, by the script's episode, rendered into token ids and a tool mask as TRL's tool loop
would have; the reward is then τ²'s evaluation of that episode (1.0 for the gold-action expert). See that module for
what it changes (the row is off-policy).
"""

from __future__ import annotations

from trl_sgcd.envs.scripted import inject_scripted_siblings, render_completion

__all__ = ["inject_scripted_siblings", "render_completion", "tau2_expert_script"]


def tau2_expert_script(env) -> list[dict]:
    """Restart `env`'s τ² task on a fresh database and play the gold-action expert (see `expert.py`)."""
    from .expert import expert_completion

    env.reset(task_id=env.task.id)
    return expert_completion(env)
