"""Sibling evidence for the credit reference: sanitized steps, and sibling selection under a token budget.

Every step of every sibling, and the task, pass through the [`~trl_sgcd.credit.reference.sanitize.Sanitizer`] first, untruncated;
only then are observations cut and siblings selected, so a secret cut in half can never slip through.

Selection follows the paper's appendix: all siblings when they fit; otherwise the smaller outcome class whole, matched
with as many of the other class as fit, preferring shorter successes (when successes outnumber failures) or longer
failures (when failures outnumber successes). Before any sibling is dropped, tool observations are truncated further.

Departure from the paper, by design: tool names seen in the rollouts are never masked as private values (they are
policy-visible through the tool schema, and masking them would zero the credit of the decisive call tokens).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from trl_sgcd.credit.reference.sanitize import SanitizedText, Sanitizer
from trl_sgcd.credit.reference.traces import format_steps, render_task, trace_steps
from trl_sgcd.credit.types import Evidence, SiblingGroup, TraceStep

__all__ = ["build_evidence", "render_sanitized_trace", "select_siblings", "visible_tool_names"]

TEMPLATE_OVERHEAD_TOKENS = 400  # instructions and headers of the reference prompt (prompt.py), generously rounded up
TRACE_OVERHEAD_TOKENS = 16  # per-sibling header
MIN_OBSERVATION_CHARS = 64


# --- traces ------------------------------------------------------------------------------------------------------------
def sanitize_steps(steps: list[TraceStep], sanitizer: Sanitizer) -> tuple[list[TraceStep], list[str]]:
    """Sanitized copies of `steps` (untruncated) and the literals masked in them."""
    out, masked = [], []
    for step in steps:
        clean = sanitizer(step.text)
        masked.extend(clean.masked)
        out.append(TraceStep(step.kind, clean.text, step.name, step.arg_keys, step.is_error))
    return out, masked


def render_sanitized_trace(
    completion: Any, *, sanitizer: Sanitizer, max_observation_chars: int | None
) -> SanitizedText:
    """[`render_trace`] with every step sanitized before observations are truncated (tool names stay readable)."""
    names = {s.name for s in trace_steps(completion) if s.kind == "call"}
    steps, masked = sanitize_steps(trace_steps(completion), sanitizer.keeping(names))
    text = format_steps(steps, max_observation_chars=max_observation_chars)
    return SanitizedText(text=text, masked=list(dict.fromkeys(masked)))


# --- selection ---------------------------------------------------------------------------------------------------------
def select_siblings(lengths: list[int], success: list[bool], budget: int) -> list[int]:
    """
    Siblings to show under a token budget (paper, Appendix B).

    All siblings when they fit. Otherwise the smaller outcome class whole (successes on a tie), plus as many of the
    other class as fit: shortest successes first when successes outnumber failures, longest failures first when
    failures outnumber successes (ties: smallest index). At least one sibling of each class is always kept, so the
    evidence stays a contrast (the caller hard-truncates traces when even that exceeds the budget).

    Args:
        lengths (`list[int]`): token length of each sibling's trace.
        success (`list[bool]`): outcome of each sibling.
        budget (`int`): token budget of all traces together.

    Returns:
        `list[int]`: selected sibling positions, ascending.
    """
    n = len(lengths)
    if sum(lengths) <= budget:
        return list(range(n))
    successes = [i for i in range(n) if success[i]]
    failures = [i for i in range(n) if not success[i]]
    if len(successes) <= len(failures):
        smaller, other = successes, sorted(failures, key=lambda i: (-lengths[i], i))  # longer failures first
    else:
        smaller, other = failures, sorted(successes, key=lambda i: (lengths[i], i))  # shorter successes first
    chosen, used = list(smaller), sum(lengths[i] for i in smaller)
    for i in other:
        if used + lengths[i] <= budget:
            chosen.append(i)
            used += lengths[i]
    if other and not any(i in chosen for i in other):
        chosen.append(min(other, key=lambda i: (lengths[i], i)))
    return sorted(chosen)


# --- evidence ----------------------------------------------------------------------------------------------------------
def approx_token_count(text: str) -> int:
    """Rough token count (~4 characters per token), used when no tokenizer is given."""
    return (len(text) + 3) // 4


def visible_tool_names(group: SiblingGroup) -> set[str]:
    """Names of the tools called in a group's rollouts (policy-visible through the tool schema)."""
    return {s.name for r in group.rollouts for s in trace_steps(r.completion) if s.kind == "call"}


def _fit(traces: list[str], budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Last resort: cut every trace to an equal share of the budget."""
    share = max(budget // max(len(traces), 1), 32)
    out = []
    for trace in traces:
        tokens = count_tokens(trace)
        if tokens > share:
            keep = max(int(len(trace) * share / tokens) - 32, 0)
            trace = f"{trace[:keep]}...[trace truncated {len(trace) - keep} chars]"
        out.append(trace)
    return out


def build_evidence(
    group: SiblingGroup,
    *,
    sanitizer: Sanitizer,
    max_input_tokens: int,
    max_observation_chars: int,
    count_tokens: Callable[[str], int] = approx_token_count,
) -> Evidence:
    """
    Sanitize, render and select the sibling evidence of one group.

    The task and every step are sanitized first (untruncated); then observations are cut to `max_observation_chars`,
    halved again while the traces exceed the budget (down to 64 characters), and only then are siblings dropped
    with [`select_siblings`]. The task prompt is never truncated.
    """
    sanitizer = sanitizer.keeping(visible_tool_names(group))
    task = sanitizer(render_task(group.prompt))
    masked, all_steps = list(task.masked), []
    for rollout in group.rollouts:
        steps, step_masked = sanitize_steps(trace_steps(rollout.completion), sanitizer)
        all_steps.append(steps)
        masked.extend(step_masked)
    budget = max(max_input_tokens - count_tokens(task.text) - TEMPLATE_OVERHEAD_TOKENS, 0)
    chars = max_observation_chars

    def render(limit: int) -> tuple[list[str], list[int]]:
        traces = [format_steps(s, max_observation_chars=limit) for s in all_steps]
        return traces, [count_tokens(t) + TRACE_OVERHEAD_TOKENS for t in traces]

    traces, lengths = render(chars)
    while sum(lengths) > budget and chars > MIN_OBSERVATION_CHARS:
        chars = max(MIN_OBSERVATION_CHARS, chars // 2)
        traces, lengths = render(chars)
    selected = select_siblings(lengths, list(group.success), budget)
    shown = [traces[i] for i in selected]
    if sum(lengths[i] for i in selected) > budget:
        shown = _fit(shown, max(budget - TRACE_OVERHEAD_TOKENS * len(shown), 0), count_tokens)
    outcomes = [bool(group.success[i]) for i in selected]
    payload = json.dumps({"task": task.text, "traces": shown, "outcomes": outcomes}, ensure_ascii=False)
    return Evidence(
        task=task.text,
        traces=shown,
        outcomes=outcomes,
        sibling_indices=selected,
        masked_literals=list(dict.fromkeys(masked)),
        digest=hashlib.sha256(payload.encode("utf-8")).hexdigest(),
        steps=all_steps,
        success=[bool(s) for s in group.success],
    )
