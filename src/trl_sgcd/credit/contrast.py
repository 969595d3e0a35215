"""The offline contrast reference: a deterministic credit reference from the sanitized sibling steps, no model.

It writes the same five sections as the external LLM (see `prompt.SECTION_TITLES`): the tools and argument shapes
(keys, never values) of the successful branch, the first step where each failed sibling departs from it, the failed
calls with their (sanitized, truncated) error observations, and how many values of each kind were masked. It is the
`"contrast"` backend of [`~trl_sgcd.credit.reference.SiblingReferenceBuilder`] and its fallback when the LLM fails.
"""

from __future__ import annotations

from collections import Counter

from trl_sgcd.credit.evidence import Evidence
from trl_sgcd.credit.prompt import SECTION_TITLES
from trl_sgcd.credit.sanitize import PLACEHOLDER_RE
from trl_sgcd.credit.traces import TraceStep

__all__ = ["contrast_sections"]

ERROR_SNIPPET_CHARS = 160
_READ_PREFIXES = ("get", "list", "search", "find", "check", "lookup", "read", "query", "fetch", "view", "show")


def _calls(steps: list[TraceStep]) -> list[TraceStep]:
    return [s for s in steps if s.kind == "call"]


def _shape(step: TraceStep) -> str:
    return f"{step.name}({', '.join(step.arg_keys)})"


def _branch(steps: list[TraceStep]) -> str:
    calls = _calls(steps)
    return " -> ".join([_shape(c) for c in calls] + ["final answer"]) if calls else "no tool call, direct answer"


def _errors(steps: list[TraceStep]) -> list[str]:
    out = []
    for step in steps:
        if step.kind == "obs" and step.is_error:
            text = " ".join(step.text.split())
            snippet = text if len(text) <= ERROR_SNIPPET_CHARS else f"{text[:ERROR_SNIPPET_CHARS]}...[truncated]"
            out.append(f"`{step.name}` returned {snippet}")
    return out


def _canonical(steps: list[list[TraceStep]], successes: list[int]) -> int:
    """Sibling whose call sequence is the most common among successes (ties: fewer calls, then lowest index)."""
    names = {i: tuple(c.name for c in _calls(steps[i])) for i in successes}
    counts = Counter(names.values())
    return min(successes, key=lambda i: (-counts[names[i]], len(names[i]), i))


def _common_prefix(a: list[str], b: list[str]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _deviation(failed: list[TraceStep], success: list[TraceStep]) -> str:
    f_calls, s_calls = _calls(failed), _calls(success)
    f_names, s_names = [c.name for c in f_calls], [c.name for c in s_calls]
    k = _common_prefix(f_names, s_names)
    if k < len(f_names) and k < len(s_names):
        return f"step {k + 1}: called {f_names[k]} where successes called {s_names[k]}"
    if k < len(s_names):
        return f"step {k + 1}: stopped calling tools and answered where successes called {s_names[k]}"
    if k < len(f_names):
        return f"step {k + 1}: called {f_names[k]} after the successful branch was already complete"
    for j, (fc, sc) in enumerate(zip(f_calls, s_calls)):
        if fc.arg_keys != sc.arg_keys:
            return (
                f"step {j + 1}: called {fc.name} with arguments ({', '.join(fc.arg_keys)}) where successes used "
                f"({', '.join(sc.arg_keys)})"
            )
    return "same tool sequence as the successful branch; the difference lies in argument values or the final answer"


def _by_siblings(lines: dict[str, list[int]]) -> str:
    """One bullet per distinct line, naming the (1-based) siblings it applies to."""
    out = []
    for line, ids in lines.items():
        who = f"Sibling {ids[0]}" if len(ids) == 1 else f"Siblings {', '.join(map(str, ids))}"
        out.append(f"- {who}: {line}")
    return "\n".join(out)


def contrast_sections(evidence: Evidence) -> dict[str, str]:
    """The five reference sections, built deterministically from the sanitized sibling steps of `evidence`."""
    steps, success = evidence.steps, evidence.success
    successes = [i for i, ok in enumerate(success) if ok]
    failures = [i for i, ok in enumerate(success) if not ok]
    best = _canonical(steps, successes)
    sections = dict.fromkeys(SECTION_TITLES, "")
    sections[SECTION_TITLES[0]] = _state_checks(steps, successes, best)
    branches: dict[str, list[int]] = {}
    for i in successes:
        branches.setdefault(_branch(steps[i]), []).append(i + 1)
    sections[SECTION_TITLES[1]] = _by_siblings(branches)
    failed: dict[str, list[int]] = {}
    deviations: dict[str, list[int]] = {}
    for i in failures:
        errors = _errors(steps[i])
        why = "; ".join(errors) if errors else "no tool error was visible; the verifier rejected the outcome"
        failed.setdefault(f"{_branch(steps[i])}. Why: {why}", []).append(i + 1)
        names = [c.name for c in _calls(steps[i])]
        closest = max(
            successes, key=lambda s: (_common_prefix(names, [c.name for c in _calls(steps[s])]), s == best, -s)
        )
        deviations.setdefault(_deviation(steps[i], steps[closest]), []).append(i + 1)
    sections[SECTION_TITLES[2]] = _by_siblings(failed)
    sections[SECTION_TITLES[3]] = _by_siblings(deviations)
    sections[SECTION_TITLES[4]] = _masked_summary(evidence)
    return sections


def _is_read(name: str) -> bool:
    return name.lower().startswith(_READ_PREFIXES)


def _state_checks(steps: list[list[TraceStep]], successes: list[int], best: int) -> str:
    branch = _calls(steps[best])
    if not branch:
        return "- Successful siblings answer directly, without tool calls."
    first_write = next((c.name for c in branch if not _is_read(c.name)), None)
    called_by_all = [c for c in branch if all(c.name in {x.name for x in _calls(steps[i])} for i in successes)]
    lines = []
    for shape in dict.fromkeys(_shape(c) for c in called_by_all if _is_read(c.name)):
        before = f" before {first_write}" if first_write else ""
        lines.append(f"- Every successful sibling checks state with {shape}{before}.")
    return (
        "\n".join(lines)
        or f"- Successful siblings act without a prior lookup; their first call is {_shape(branch[0])}."
    )


def _masked_summary(evidence: Evidence) -> str:
    text = "\n".join([evidence.task] + [s.text for steps in evidence.steps for s in steps])
    counts = Counter(PLACEHOLDER_RE.findall(text))
    if not counts:
        return "- No literal was masked in this evidence; do not reward copying task-specific values."
    lines = [
        f"- {n} value(s) shown as [{label}] stay masked; never reconstruct them."
        for label, n in sorted(counts.items())
    ]
    return "\n".join(lines)
