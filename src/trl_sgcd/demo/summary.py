"""What `trl-sgcd demo` prints at the end: each figure defined once, in its own block.

1. **held-out pass@1** before and after RL, per category, and the tool-use audit (one table: evaluation only);
2. **training**, one line per RL step from the step's own log entry: its mixed groups, the scored tokens weighted
   above 1 (the figure `demo.png`'s rollout panel and histogram show), its train reward;
3. **credit lift** of the run's scored rollouts on their decisive tokens (its own line, not in the table);
4. **outputs** and wall time.
"""

from __future__ import annotations

from collections.abc import Sequence


def plural(n: int | float, word: str, words: str | None = None) -> str:
    """`"1 task"`, `"2 tasks"`, `"0 tasks"` (`words` for an irregular plural)."""
    n = int(n)
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _number(entry: dict, key: str) -> float | None:
    value = entry.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def step_line(entry: dict, *, groups_per_step: int, credit_mode: str) -> str:
    """One RL step, from its log entry: `"step 2: 1 of 1 group mixed, 351 of 514 scored tokens weighted above 1;
    train reward 0.50"`, or `"step 1: no mixed group (3 groups drawn in 3 rounds); train reward 0.00"`."""
    step = int(entry.get("step", 0))
    mixed_fraction = _number(entry, "sgcd/mixed_group_fraction")
    rounds, drawn = _number(entry, "sgcd/resample/rounds"), _number(entry, "sgcd/resample/generated_groups")
    reward = _number(entry, "reward")
    tail = "" if reward is None else f"; train reward {reward:.2f}"
    if mixed_fraction is None:
        return f"step {step}: no credit statistics logged{tail}"
    mixed = round(mixed_fraction * groups_per_step)
    drew = ""
    if drawn is not None and rounds is not None and rounds > 1:
        drew = f" ({plural(drawn, 'group')} drawn in {plural(rounds, 'round')})"
    if mixed == 0:
        return f"step {step}: no mixed group{drew}, so no credit{tail}"
    text = f"step {step}: {mixed} of {plural(groups_per_step, 'group')} mixed{drew}"
    credit, scored = _number(entry, "sgcd/credit_tokens"), _number(entry, "sgcd/scored_tokens")
    if credit_mode != "off" and scored:
        text += f", {int(credit or 0)} of {plural(scored, 'scored token')} weighted above 1"
    return text + tail


def training_block(log_history: Sequence[dict], *, groups_per_step: int, num_generations: int, credit_mode: str):
    """The training block: a header (steps x tasks x rollouts) and one [`step_line`] per logged step."""
    steps = [e for e in log_history if "step" in e and ("reward" in e or "sgcd/mixed_group_fraction" in e)]
    lines = [
        f"{credit_mode} training: {plural(len(steps), 'step')} x {plural(groups_per_step, 'task')} x "
        f"{plural(num_generations, 'rollout')} (a group is one task's rollouts; mixed = some succeed, some fail)"
    ]
    lines += ["  " + step_line(e, groups_per_step=groups_per_step, credit_mode=credit_mode) for e in steps]
    totals = [(_number(e, "sgcd/credit_tokens") or 0.0, _number(e, "sgcd/scored_tokens") or 0.0) for e in steps]
    scored = sum(t for _, t in totals)
    if credit_mode != "off" and len(steps) > 1 and scored:
        lines.append(
            f"  all steps: {int(sum(c for c, _ in totals))} of {plural(scored, 'scored token')} weighted above 1"
        )
    return lines


def eval_table(before: dict, after: dict, mode: str) -> list[str]:
    """Held-out pass@1 (overall, per category) and the tool-use audit, before and after RL."""
    lines = [
        f"{'held-out test tasks (greedy)':<34}{'warm start':>11}{'+ ' + mode:>11}",
        f"{'pass@1, all ' + plural(before['num_tasks'], 'task'):<34}{before['pass@1']:>11.3f}{after['pass@1']:>11.3f}",
    ]
    for category, b in before["per_category"].items():
        a = after["per_category"].get(category, {})
        label = f"  {category} (n={b['num_tasks']})"
        lines.append(f"{label:<34}{b['pass@1']:>11.3f}{a.get('pass@1', float('nan')):>11.3f}")
    audit_rows = (
        ("zero-tool success share", "zero_tool_success_share", ".3f"),
        ("tools per success", "tools_per_success", ".2f"),
        ("tool failure rate", "tool_failure_rate", ".3f"),
    )
    lines.append("tool-use audit")
    for label, key, fmt in audit_rows:
        b, a = before["audit"].get(key), after["audit"].get(key)
        lines.append(
            f"{'  ' + label:<34}{format(b, fmt) if b is not None else 'n/a':>11}"
            f"{format(a, fmt) if a is not None else 'n/a':>11}"
        )
    return lines


def format_summary(metrics: dict) -> str:
    """The summary printed at the end of the demo (blocks separated by blank lines)."""
    config = metrics["config"]
    mode = config.get("credit_mode", "sgcd")
    num_generations = int(config.get("num_generations", 4))
    groups = max(int(config.get("rollouts_per_step", num_generations)) // num_generations, 1)
    blocks = [eval_table(metrics["before"], metrics["after"], mode)]
    log = metrics["training"]["log_history"]
    blocks.append(training_block(log, groups_per_step=groups, num_generations=num_generations, credit_mode=mode))
    if mode != "off":
        from trl_sgcd.demo.recording import format_lift

        blocks.append([format_lift(metrics["training"].get("credit_localization"))])
    wall = metrics["wall_s"]
    blocks.append(
        [
            "wall time: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items() if k != "total")
            + f" | total {wall['total']:.0f} s ({wall['total'] / 60:.1f} min)"
        ]
    )
    return "\n\n".join("\n".join(block) for block in blocks)
