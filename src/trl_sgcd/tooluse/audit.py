"""Tool-use audit of rollouts: the zero-tool collapse diagnostic of the paper (§3, Appendix B).

Naive self-distillation on tool-use tasks can keep the easy, information-only successes while abandoning executable
actions: the share of successes that call no tool rises to 100% and the mean number of tool calls per success falls to
zero. `tool_use_audit` measures exactly that from the completions and rewards of a batch (or an evaluation run), plus
the tool failure rate and per-category success rates. Pure functions: message lists or strings in, floats out.

Completions are TRL completions: either lists of messages (assistant messages, possibly with `tool_calls`, and `tool`
messages with the observations) or plain strings (rendered text with `<tool_call>` / `<tool_response>` blocks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from trl_sgcd.credit.reference.traces import is_tool_error

__all__ = ["count_tool_calls", "count_tool_errors", "is_tool_error", "tool_use_audit"]

_TOOL_CALL = re.compile(r"<tool_call>")
_TOOL_RESPONSE = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)


def count_tool_calls(completion) -> int:
    """Number of tool calls in a completion (a message list, or a string with `<tool_call>` blocks)."""
    if isinstance(completion, str):
        return len(_TOOL_CALL.findall(completion))
    return sum(len(m.get("tool_calls") or []) for m in completion if m.get("role") == "assistant")


def count_tool_errors(completion) -> int:
    """Number of tool observations in a completion that report an error (see `is_tool_error`)."""
    if isinstance(completion, str):
        return sum(is_tool_error(r) for r in _TOOL_RESPONSE.findall(completion))
    return sum(is_tool_error(m.get("content")) for m in completion if m.get("role") == "tool")


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def tool_use_audit(
    completions: Sequence,
    rewards: Sequence[float],
    categories: Sequence[str] | None = None,
    *,
    success_threshold: float = 1.0,
) -> dict[str, float]:
    """Tool-use audit of a set of rollouts.

    Args:
        completions (`Sequence`):
            One completion per rollout: a list of messages or a string.
        rewards (`Sequence[float]`):
            The verified reward of each rollout.
        categories (`Sequence[str]`, *optional*):
            The task category of each rollout (`action`, `information`, `transfer`, `no_action`, ...). When given,
            per-category success rates and zero-tool shares are added.
        success_threshold (`float`, *optional*, defaults to `1.0`):
            A rollout succeeds when its reward is at least this.

    Returns:
        `dict[str, float]`:
            - `success_rate`: share of rollouts that succeed;
            - `zero_tool_success_share`: share of successes that called no tool (0.0 without successes);
            - `tools_per_success`: mean number of tool calls per success (0.0 without successes);
            - `tool_failure_rate`: error observations / tool calls (0.0 without tool calls);
            - `tools_per_rollout`, `num_rollouts`, `num_successes`;
            - with `categories`: `success/<category>` and `zero_tool_success_share/<category>` for each category.
    """
    if len(completions) != len(rewards):
        raise ValueError(f"got {len(completions)} completions but {len(rewards)} rewards")
    if categories is not None and len(categories) != len(rewards):
        raise ValueError(f"got {len(categories)} categories but {len(rewards)} rewards")
    calls = [count_tool_calls(c) for c in completions]
    errors = [count_tool_errors(c) for c in completions]
    success = [r is not None and r == r and r >= success_threshold for r in rewards]  # r == r: NaN is a failure
    winners = [n for n, ok in zip(calls, success) if ok]
    metrics = {
        "success_rate": _rate(sum(success), len(success)),
        "zero_tool_success_share": _rate(sum(n == 0 for n in winners), len(winners)),
        "tools_per_success": _rate(sum(winners), len(winners)),
        "tool_failure_rate": _rate(sum(errors), sum(calls)),
        "tools_per_rollout": _rate(sum(calls), len(calls)),
        "num_rollouts": float(len(success)),
        "num_successes": float(len(winners)),
    }
    if categories is not None:
        for category in sorted(set(categories)):
            idx = [i for i, c in enumerate(categories) if c == category]
            won = [calls[i] for i in idx if success[i]]
            metrics[f"success/{category}"] = _rate(len(won), len(idx))
            metrics[f"zero_tool_success_share/{category}"] = _rate(sum(n == 0 for n in won), len(won))
    return metrics
