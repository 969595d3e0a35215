"""Scripted policies on τ² tasks: the gold-action expert and the no-op baseline, scored by τ²'s own evaluation.

- **expert**: replays the task's gold actions through the adapter's tools (one call per assistant turn, τ²'s real
  observations), then says τ²'s `communicate_info` strings in a final message (and the transfer line of the policy
  after a transfer). Since τ² defines success as "the database equals the one after the gold actions, and the required
  information was said", the expert must score 1.0 on every task: a check of the adapter, not of a model.
- **noop**: answers once, calls no tool. On τ²-airline it passes the tasks whose gold actions change nothing (no-action,
  read-only information, and transfer, since `transfer_to_human_agents` writes nothing): the floor a trained policy
  has to beat (on τ-bench v1 airline about 38% of tasks pass this way).

Both return TRL-style completions (assistant messages with `tool_calls`, tool messages), so they also serve as
scripted siblings (see `siblings.py`) and as supervised warm-start conversations.
"""

from __future__ import annotations

import json

from .domain import TRANSFER_TOOL, load_domain
from .env import make_env_class
from .reward import tau2_reward

NOOP_ANSWER = "I'm sorry, but I cannot help with that request."
TRANSFER_LINE = "YOU ARE BEING TRANSFERRED TO A HUMAN AGENT. PLEASE HOLD ON."


def _call_message(name: str, arguments: dict) -> dict:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


def expert_completion(env, gold_actions: list[dict] | str | None = None) -> list[dict]:
    """
    Play the gold actions of `env`'s current task through its tools and return the completion (see module docstring).

    Args:
        env ([`Tau2Env`]): An environment after `reset(task_id=...)`; it holds the episode afterwards.
        gold_actions (`list[dict]` or `str`, *optional*): The actions (a row's `gold_actions` JSON); by default the
            task's own.
    """
    if isinstance(gold_actions, str):
        gold_actions = json.loads(gold_actions)
    actions = gold_actions if gold_actions is not None else env.domain.gold_actions(env.task.id)
    completion = []
    for action in actions:
        name, arguments = action["name"], dict(action["arguments"])
        completion.append(_call_message(name, arguments))
        completion.append({"role": "tool", "name": name, "content": getattr(env, name)(**arguments)})
    criteria = env.task.evaluation_criteria
    facts = list((criteria.communicate_info if criteria is not None else None) or [])
    answer = " ".join(["Here is what I found and did:", *facts]) if facts else "Your request has been handled."
    if any(a["name"] == TRANSFER_TOOL for a in actions):
        answer = TRANSFER_LINE
    completion.append({"role": "assistant", "content": answer})
    return completion


def noop_completion() -> list[dict]:
    """The no-op policy's completion: one refusal, no tool call."""
    return [{"role": "assistant", "content": NOOP_ANSWER}]


def scripted_scores(domain_name: str, split: str = "test", *, policy: str = "expert", rows=None) -> dict:
    """
    Score a scripted policy on a τ² split with τ²'s evaluation: `{"pass@1", "per_category", "records"}`.

    Args:
        domain_name (`str`): `"airline"` or `"retail"`.
        split (`str`, *optional*, defaults to `"test"`): τ²'s split.
        policy (`str`, *optional*, defaults to `"expert"`): `"expert"` or `"noop"`.
        rows (`list[dict]`, *optional*): Dataset rows to score instead of the whole split (need `prompt`, `task_id`).
    """
    from .dataset import tau2_rows

    if policy not in ("expert", "noop"):
        raise ValueError(f"policy={policy!r} is not supported; choose 'expert' or 'noop'.")
    rows = list(rows) if rows is not None else tau2_rows(domain_name, split)
    env_class = make_env_class(domain_name)
    domain = load_domain(domain_name)
    records = []
    for row in rows:
        env = env_class()
        env.reset(task_id=row["task_id"])
        completion = expert_completion(env) if policy == "expert" else noop_completion()
        reward = tau2_reward([completion], [env], [row["prompt"]])[0]
        records.append({"task_id": row["task_id"], "category": domain.category(row["task_id"]), "reward": reward})
    return summarise(records)


def summarise(records: list[dict]) -> dict:
    """pass@1 overall and per category from `{"category", "reward"}` records (success = reward >= 1)."""
    per_category = {}
    for category in sorted({r["category"] for r in records}):
        rewards = [r["reward"] for r in records if r["category"] == category]
        per_category[category] = {"pass@1": sum(x >= 1.0 for x in rewards) / len(rewards), "num_tasks": len(rewards)}
    total = sum(r["reward"] >= 1.0 for r in records) / len(records) if records else 0.0
    return {"pass@1": total, "num_tasks": len(records), "per_category": per_category, "records": records}
