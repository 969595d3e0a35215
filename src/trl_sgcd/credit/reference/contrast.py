"""The offline contrast reference: a deterministic credit reference from the sanitized sibling steps, no model.

It writes the same five sections as the external LLM (see `prompt.SECTION_TITLES`). The section that carries credit is
**Deviation points**: for each failed sibling, the first step where it leaves what the closest successful sibling did,
quoting both calls as they were written (tool name and JSON arguments, after the sanitizer: private values are
placeholders, the failure's own non-private values stay), the arguments that differ ("`flight_numbers` was
["HAT071"] where the success used ["[PRIVATE]"]"), and a one-line summary of its later steps. When the calls agree
everywhere, the two final answers are quoted instead.

Why quotes and not shapes: measured on the controlled tier of `benchmarks/bench_credit_controlled.py`, a small policy
reacts to its context by copying strings. A reference that quotes the failed sibling's own deviating call makes the
teacher's distribution move on exactly those tokens; one that names only tool names and argument keys (this
builder's former output) moves it nowhere in particular (credit lift below 1, README "Where credit lands").

The other sections: the state checks (look-ups every success makes before its first write), the successful branch
(the canonical success's calls quoted, other successful shapes named), each failed branch with its visible tool
errors, and how many values of each kind were masked. It is the `"contrast"` backend of
[`~trl_sgcd.credit.reference.builder.SiblingReferenceBuilder`] and its fallback when the LLM fails.
"""

from __future__ import annotations

import json
from collections import Counter

from trl_sgcd.credit.reference.prompt import SECTION_TITLES
from trl_sgcd.credit.reference.sanitize import PLACEHOLDER_RE
from trl_sgcd.credit.types import Evidence, TraceStep

__all__ = ["contrast_sections", "deviation_line"]

ERROR_SNIPPET_CHARS = 120
QUOTE_CHARS = 200
"""Longest quoted call arguments or final answer (sanitized text), in characters."""
_READ_PREFIXES = ("get", "list", "search", "find", "check", "lookup", "read", "query", "fetch", "view", "show")


def _calls(steps: list[TraceStep]) -> list[TraceStep]:
    return [s for s in steps if s.kind == "call"]


def _cut(text: str, limit: int = QUOTE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit]}...[truncated]"


def _shape(step: TraceStep) -> str:
    return f"{step.name}({', '.join(step.arg_keys)})"


def _quote(step: TraceStep) -> str:
    """A call as written: `name({"key": "value", ...})` (sanitized arguments)."""
    return f"{step.name}({_cut(step.text)})"


def _answer(steps: list[TraceStep]) -> str | None:
    """The sibling's last assistant text after its last call (its final answer), if any."""
    last_call = max((k for k, s in enumerate(steps) if s.kind == "call"), default=-1)
    said = [s.text for s in steps[last_call + 1 :] if s.kind == "say" and s.text.strip()]
    return said[-1] if said else None


def _branch(steps: list[TraceStep]) -> str:
    calls = _calls(steps)
    return " -> ".join([_shape(c) for c in calls] + ["final answer"]) if calls else "no tool call, direct answer"


def _quoted_branch(steps: list[TraceStep]) -> str:
    calls = _calls(steps)
    return " -> ".join([_quote(c) for c in calls] + ["final answer"]) if calls else "no tool call, direct answer"


def _errors(steps: list[TraceStep]) -> list[str]:
    return [
        f"`{s.name}` returned {_cut(s.text, ERROR_SNIPPET_CHARS)}" for s in steps if s.kind == "obs" and s.is_error
    ]


def _same(a: TraceStep, b: TraceStep) -> bool:
    return a.name == b.name and a.text == b.text


def _common_prefix(a: list[TraceStep], b: list[TraceStep]) -> int:
    """Number of leading calls that are equal (same name, same sanitized arguments)."""
    k = 0
    while k < min(len(a), len(b)) and _same(a[k], b[k]):
        k += 1
    return k


def _canonical(steps: list[list[TraceStep]], successes: list[int]) -> int:
    """Sibling whose call sequence is the most common among successes (ties: fewer calls, then lowest index)."""
    names = {i: tuple(c.name for c in _calls(steps[i])) for i in successes}
    counts = Counter(names.values())
    return min(successes, key=lambda i: (-counts[names[i]], len(names[i]), i))


def _arguments(step: TraceStep) -> dict | None:
    try:
        value = json.loads(step.text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _differing_arguments(failed: TraceStep, success: TraceStep) -> str:
    """`; key was X where the success used Y` for each argument that differs (JSON values, sanitized)."""
    mine, theirs = _arguments(failed), _arguments(success)
    if mine is None or theirs is None:
        return ""
    parts = []
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) == theirs.get(key):
            continue
        was = json.dumps(mine[key], ensure_ascii=False) if key in mine else "missing"
        used = json.dumps(theirs[key], ensure_ascii=False) if key in theirs else "not used"
        parts.append(f"`{key}` was {_cut(was, 80)} where the success used {_cut(used, 80)}")
    return "; " + "; ".join(parts) if parts else ""


def _later(calls: list[TraceStep], k: int, answered: bool) -> str:
    rest = [c.name for c in calls[k + 1 :]]
    tail = "the final answer" if answered else "no final answer"
    return f" Later: {len(rest)} more call(s) ({', '.join(rest)}), then {tail}." if rest else f" Then {tail}."


def deviation_line(failed: list[TraceStep], success: list[TraceStep], *, success_id: int) -> str:
    """
    The deviation of one failed sibling from one successful sibling, quoting both (sanitized) steps.

    The first call that differs (name or sanitized arguments) from the success's call at the same position is quoted
    beside the success's call, with the arguments that differ; a failure that stops early quotes its answer, one that
    goes on quotes its extra call; with identical calls, the two final answers are quoted.

    Args:
        failed, success (`list[TraceStep]`): the sanitized steps of the two siblings.
        success_id (`int`): the 1-based number of the successful sibling in the reference.

    Returns:
        `str`: `"step k: ..."`, one line (the caller names the failed sibling).
    """
    f_calls, s_calls = _calls(failed), _calls(success)
    k = _common_prefix(f_calls, s_calls)
    who, ref = f"step {k + 1}", f"sibling {success_id} (success)"
    f_answer, s_answer = _answer(failed), _answer(success)
    if k < len(f_calls) and k < len(s_calls):
        fc, sc = f_calls[k], s_calls[k]
        diff = _differing_arguments(fc, sc) if fc.name == sc.name else ""
        later = _later(f_calls, k, f_answer is not None)
        return f"{who}: called {_quote(fc)} where {ref} called {_quote(sc)}{diff}.{later}"
    if k < len(s_calls):
        said = f'answered "{_cut(f_answer)}"' if f_answer else "stopped without a call or an answer"
        return f"{who}: {said} where {ref} called {_quote(s_calls[k])}."
    if k < len(f_calls):
        later = _later(f_calls, k, f_answer is not None)
        return f"{who}: called {_quote(f_calls[k])} after the successful branch was complete.{later}"
    if (f_answer or "") != (s_answer or ""):
        mine = f'"{_cut(f_answer)}"' if f_answer else "nothing"
        theirs = f'"{_cut(s_answer)}"' if s_answer else "nothing"
        return f"{who} (final answer): answered {mine} where {ref} answered {theirs}."
    return f"{who}: same calls and answer as {ref}; the reason for the failure is not visible in the trace."


def contrast_sections(evidence: Evidence) -> dict[str, str]:
    """The five reference sections, built deterministically from the sanitized sibling steps of `evidence`."""
    steps, success = evidence.steps, evidence.success
    successes = [i for i, ok in enumerate(success) if ok]
    failures = [i for i, ok in enumerate(success) if not ok]
    best = _canonical(steps, successes)
    sections = dict.fromkeys(SECTION_TITLES, "")
    sections[SECTION_TITLES[0]] = _state_checks(steps, successes, best)
    sections[SECTION_TITLES[1]] = _successful_branches(steps, successes, best)
    failed: dict[str, list[int]] = {}
    deviations: dict[str, list[int]] = {}
    for i in failures:
        errors = _errors(steps[i])
        why = "; ".join(errors) if errors else "no tool error was visible; the verifier rejected the outcome"
        failed.setdefault(f"{_branch(steps[i])}. Why: {why}", []).append(i + 1)
        calls = _calls(steps[i])
        closest = max(successes, key=lambda s: (_common_prefix(calls, _calls(steps[s])), s == best, -s))
        deviations.setdefault(deviation_line(steps[i], steps[closest], success_id=closest + 1), []).append(i + 1)
    sections[SECTION_TITLES[2]] = _by_siblings(failed)
    sections[SECTION_TITLES[3]] = _by_siblings(deviations)
    sections[SECTION_TITLES[4]] = _masked_summary(evidence)
    return sections


def _by_siblings(lines: dict[str, list[int]]) -> str:
    """One bullet per distinct line, naming the (1-based) siblings it applies to."""
    out = []
    for line, ids in lines.items():
        who = f"Sibling {ids[0]}" if len(ids) == 1 else f"Siblings {', '.join(map(str, ids))}"
        out.append(f"- {who}: {line}")
    return "\n".join(out)


def _successful_branches(steps: list[list[TraceStep]], successes: list[int], best: int) -> str:
    """The canonical success quoted call by call; successes with another call sequence named by their shapes."""
    lines = [f"- Sibling {best + 1}: {_quoted_branch(steps[best])}"]
    others: dict[str, list[int]] = {}
    for i in successes:
        if i != best and _branch(steps[i]) != _branch(steps[best]):
            others.setdefault(_branch(steps[i]), []).append(i + 1)
    same = [i + 1 for i in successes if i != best and _branch(steps[i]) == _branch(steps[best])]
    if same:
        lines.append(f"- {'Sibling' if len(same) == 1 else 'Siblings'} {', '.join(map(str, same))}: the same tools")
    return "\n".join(lines + ([_by_siblings(others)] if others else []))


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
