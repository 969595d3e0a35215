"""Metrics of an evaluation: rewards of finished episodes, pass@1 and pass^k per category, per-task records, audit.

Metrics follow tau-bench (paper Appendix B): pass@1 is one greedy rollout per task; pass^k counts a task only if all k
sampled rollouts succeed.
"""

from __future__ import annotations

from collections.abc import Callable

from trl_sgcd.tooluse.audit import count_tool_calls, count_tool_errors, tool_use_audit


def score_episodes(episodes: list[dict], reward_func: Callable) -> list[float]:
    """One reward per episode from a TRL-style reward function (`None` becomes NaN, a failure)."""
    rows = [e["row"] for e in episodes]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
    rewards = reward_func(
        prompts=[e["prompt"] for e in episodes],
        completions=[e["completion"] for e in episodes],
        environments=[e["env"] for e in episodes],
        **columns,
    )
    return [float("nan") if r is None else float(r) for r in rewards]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def summarise(rows, primary: list[dict], primary_rewards, samples: list[list[float]], greedy: bool, threshold: float):
    """Metrics and per-task records. pass@1 per task: the greedy success, else the mean success of the samples."""
    categories = [r.get("category", "all") for r in rows]
    success = [r >= threshold for r in primary_rewards]  # NaN compares False: a failure
    sampled = [[s[i] >= threshold for s in samples] for i in range(len(rows))]
    pass1 = [float(ok) if greedy else _mean(s) for ok, s in zip(success, sampled)]
    all_k = [all(s) if s else ok for s, ok in zip(sampled, success)]
    per_category = {}
    for category in sorted(set(categories)):
        idx = [i for i, c in enumerate(categories) if c == category]
        per_category[category] = {
            "pass@1": _mean(pass1[i] for i in idx),
            "pass^k": _mean(all_k[i] for i in idx),
            "num_tasks": len(idx),
        }
    records = []
    for i, (row, episode) in enumerate(zip(rows, primary)):
        completion = episode["completion"]
        answers = [m.get("content", "") for m in completion if m["role"] == "assistant"]
        records.append(
            {
                "task_id": row.get("task_id"),
                "category": categories[i],
                "reward": primary_rewards[i],
                "success": success[i],
                "sample_rewards": [s[i] for s in samples],
                "num_tool_calls": count_tool_calls(completion),
                "num_tool_errors": count_tool_errors(completion),
                "num_turns": episode["num_turns"],
                "final_answer": answers[-1] if answers else "",
                "completion": completion,
            }
        )
    completions = [e["completion"] for e in primary]
    audit = tool_use_audit(completions, primary_rewards, categories, success_threshold=threshold)
    return {
        "pass@1": _mean(pass1),
        "pass^k": _mean(all_k),
        "per_category": per_category,
        "audit": audit,
        "records": records,
    }
