"""Sibling evidence for the credit reference: sanitizer, trace rendering, and sibling selection under a token budget.

Everything the external LLM (or the offline contrast builder) sees passes through [`Sanitizer`] first: credentials,
payment and account values, contact details, evaluator/oracle output and private dataset values (gold answers, gold
actions) are replaced by typed placeholders, and the masked literals are returned so that their tokens get zero credit
later (paper, Appendix B, "Leakage and literal masking"). Sanitizing happens before any truncation, so a secret cut in
half can never slip through.

Selection follows the paper's appendix: all siblings when they fit; otherwise the smaller outcome class whole, matched
with as many of the other class as fit, preferring shorter successes (when successes outnumber failures) or longer
failures (when failures outnumber successes). Before any sibling is dropped, tool observations are truncated further.

The text form of a trace (`ASSISTANT: ...`, `CALL name(args)`, `OBS name: ...`) lives in `prompts.py` with the rest
of what the LLM reads; `render_trace` is re-exported here.

Departure from the paper, by design: tool names seen in the rollouts are never masked as private values (they are
policy-visible through the tool schema, and masking them would zero the credit of the decisive call tokens).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from trl_sgcd.credit.prompt import TraceStep, format_steps, render_task, render_trace, trace_steps
from trl_sgcd.credit.siblings import SiblingGroup

__all__ = [
    "Evidence",
    "SanitizedText",
    "Sanitizer",
    "TraceStep",
    "build_evidence",
    "render_sanitized_trace",
    "render_task",
    "render_trace",
    "sanitize",
    "select_siblings",
    "trace_steps",
]

PLACEHOLDERS = ("SECRET", "CARD", "IBAN", "ACCOUNT", "EMAIL", "PHONE", "EVALUATOR", "PRIVATE")
_PLACEHOLDER_RE = re.compile(r"\[(?:" + "|".join(PLACEHOLDERS) + r")\]")
MIN_PRIVATE_CHARS = 3
TEMPLATE_OVERHEAD_TOKENS = 400  # instructions and headers of the reference prompt (prompts.py), generously rounded up
TRACE_OVERHEAD_TOKENS = 16  # per-sibling header
MIN_OBSERVATION_CHARS = 64

# --- patterns ----------------------------------------------------------------------------------------------------------
_EVAL_KEYS = (
    r"(?:evaluator|oracle|grader|judge|verifier)(?:[ _-]?(?:report|output|result|feedback|verdict|notes?))?"
    r"|gold(?:[ _-]?(?:answer|actions?|label|output|solution|reference|response))?"
    r"|expected[ _-]?(?:answer|output|actions?|result)|ground[ _-]?truth|reward(?:[ _-]?(?:report|info))?"
)
_SECRET_KEYS = (
    r"password|passwd|pwd|passphrase|passcode|client[ _-]?secret|secret(?:[ _-]?(?:access[ _-]?)?key)?"
    r"|api[ _-]?key|apikey|access[ _-]?key(?:[ _-]?id)?|private[ _-]?key"
    r"|(?:access|auth|refresh|api|bearer|session|id)[ _-]?token|token|pin|cvv|cvc|security[ _-]?code"
)
_QUOTED_KEY_RE = {
    "EVALUATOR": re.compile(r"(?i)([\"'])(?:" + _EVAL_KEYS + r")\1\s*:\s*"),
    "SECRET": re.compile(r"(?i)([\"'])(?:" + _SECRET_KEYS + r")\1\s*:\s*"),
}
_EVAL_LINE_RE = re.compile(r"(?im)^[ \t>*#-]*(?:" + _EVAL_KEYS + r")[ \t]*[:=][ \t]*(?P<v>\S[^\n]*)$")
_SECRET_KV_RE = re.compile(r"(?i)(?<![\w\"'])(?:" + _SECRET_KEYS + r")[ \t]*[:=][ \t]*(?P<v>[^\s,;'\"}\])]+)")
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
_TOKEN_RE = re.compile(
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{16,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bxox[abpr]-[A-Za-z0-9-]{10,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
_BEARER_RE = re.compile(r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9\-._~+/]{8,}=*)")
_CARD_RE = re.compile(
    r"(?<![\w-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{5}|\d{13,19})(?![\w-])"
)
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_ACCOUNT_RE = re.compile(
    r"(?i)\b(?:bank[ _-]?)?(?:account|acct|routing|sort[ _-]?code|aba)(?:[ _-]?(?:number|no|num|nr|id))?\.?[\"']?"
    r"[ \t]*(?:[:=#][ \t]*|is[ \t]+)?[\"']?(?P<v>\d(?:[ -]?\d){4,16})(?![\w-])"
)
_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}|\d{3}([.-])\d{3}\1\d{4}|\d{3} \d{3} \d{4})(?![\w-])"
)
_PHONE_KV_RE = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell)(?:[ _-]?(?:number|no))?[\"']?[ \t]*[:=]?[ \t]*"
    r"[\"']?(?P<v>\d{7,15})(?!\w)"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _scan_value(text: str, pos: int) -> int:
    """End of the JSON/Python literal that starts at `pos` (string, object, list or bare scalar)."""
    if pos >= len(text):
        return pos
    opener = text[pos]
    if opener in "\"'":
        i = pos + 1
        while i < len(text) and text[i] != opener:
            i += 2 if text[i] == "\\" else 1
        return min(i + 1, len(text))
    if opener in "[{":
        depth, i, quote = 0, pos, None
        while i < len(text):
            ch = text[i]
            if quote:
                if ch == "\\":
                    i += 1
                elif ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return len(text)
    match = re.compile(r"[^,}\]\n]*").match(text, pos)
    return len(match.group(0).rstrip()) + pos


def flatten_values(value: Any) -> list[str]:
    """Strings of a (nested) dataset value: str, numbers, lists and dict values (keys are not private)."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, dict):
        return [s for v in value.values() for s in flatten_values(v)]
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in flatten_values(v)]
    if isinstance(value, float) and value.is_integer():
        return [str(int(value)), str(value)]
    text = str(value).strip()
    if isinstance(value, str) and text[:1] in "[{":
        try:
            return [text, *flatten_values(json.loads(text))]
        except ValueError:
            pass
    return [text]


@dataclass
class SanitizedText:
    """Sanitized text and the original literals that were masked in it."""

    text: str
    masked: list[str] = field(default_factory=list)


class Sanitizer:
    """
    Mask credentials, payment/account values, contact details, evaluator output and private values with placeholders.

    Args:
        private_values (`Iterable`, *optional*):
            Private dataset values (str, numbers, lists, dicts: flattened); masked as `[PRIVATE]` wherever they occur,
            case-insensitively. Values shorter than 3 characters are ignored.
        keep (`Iterable[str]`, *optional*):
            Values never masked as private (e.g. tool names, which the policy sees in the tool schema).
    """

    def __init__(self, private_values: Iterable[Any] = (), *, keep: Iterable[str] = ()):
        self.keep = {k.lower() for k in keep}
        values = {v for raw in private_values for v in flatten_values(raw)}
        self.private_values = sorted(
            (
                v
                for v in values
                if len(v) >= MIN_PRIVATE_CHARS and v.lower() not in self.keep and not _is_placeholder(v)
            ),
            key=lambda v: (-len(v), v),
        )
        self._private_re = None
        if self.private_values:
            alternation = "|".join(re.escape(v) for v in self.private_values)
            self._private_re = re.compile(r"(?i)(?<![A-Za-z0-9])(?:" + alternation + r")(?![A-Za-z0-9])")

    def keeping(self, names: Iterable[str]) -> Sanitizer:
        """A copy that also keeps `names` unmasked."""
        return Sanitizer(self.private_values, keep=set(self.keep) | {n.lower() for n in names})

    def __call__(self, text: Any) -> SanitizedText:
        text = "" if text is None else str(text)
        masked: list[str] = []
        text = _sub(_PEM_RE, text, "SECRET", masked)
        text = _mask_quoted_values(text, _QUOTED_KEY_RE["EVALUATOR"], "EVALUATOR", masked)
        text = _sub(_EVAL_LINE_RE, text, "EVALUATOR", masked, group="v")
        text = _mask_quoted_values(text, _QUOTED_KEY_RE["SECRET"], "SECRET", masked)
        text = _sub(_SECRET_KV_RE, text, "SECRET", masked, group="v")
        text = _sub(_BEARER_RE, text, "SECRET", masked, group="v")
        text = _sub(_TOKEN_RE, text, "SECRET", masked)
        if self._private_re is not None:
            text = _sub(self._private_re, text, "PRIVATE", masked)
        text = _sub(_IBAN_RE, text, "IBAN", masked, check=_iban_prefix)
        text = _sub(_CARD_RE, text, "CARD", masked, check=lambda s: _luhn_ok(re.sub(r"\D", "", s)))
        text = _sub(_ACCOUNT_RE, text, "ACCOUNT", masked, group="v")
        text = _sub(_EMAIL_RE, text, "EMAIL", masked)
        text = _sub(_PHONE_KV_RE, text, "PHONE", masked, group="v")
        text = _sub(_PHONE_RE, text, "PHONE", masked, check=lambda s: 7 <= len(re.sub(r"\D", "", s)) <= 15)
        return SanitizedText(text=text, masked=list(dict.fromkeys(masked)))


def sanitize(text: Any, *, private_values: Iterable[Any] = ()) -> SanitizedText:
    """Functional form of [`Sanitizer`]."""
    return Sanitizer(private_values)(text)


def _is_placeholder(text: str) -> bool:
    return not _PLACEHOLDER_RE.sub("", text).strip(" \t\n\"',;:")


def _iban_prefix(candidate: str) -> int | bool:
    """Length of the longest valid IBAN prefix of `candidate` (cut at group boundaries), or False."""
    parts = candidate.split(" ")
    for k in range(len(parts), 0, -1):
        if _iban_ok("".join(parts[:k])):
            return len(" ".join(parts[:k]))
    return False


def _sub(pattern: re.Pattern, text: str, label: str, masked: list[str], *, group: int | str = 0, check=None) -> str:
    """Replace `group` of every match with `[label]` unless it is already a placeholder or `check` rejects it."""

    protected = [(m.start(), m.end()) for m in _PLACEHOLDER_RE.finditer(text)]

    def replace(match: re.Match) -> str:
        whole, value = match.group(0), match.group(group)
        if not value or _is_placeholder(value):
            return whole
        lo, hi = match.span(group)
        if any(s < hi and lo < e for s, e in protected):  # never re-mask inside a placeholder
            return whole
        end = match.end(group)
        if check is not None:
            verdict = check(value)
            if verdict is False:
                return whole
            if verdict is not True:  # a shorter valid prefix
                end = match.start(group) + verdict
                value = value[:verdict]
        masked.append(value)
        start = match.start(group) - match.start()
        return whole[:start] + f"[{label}]" + whole[end - match.start() :]

    return pattern.sub(replace, text)


def _mask_quoted_values(text: str, key_re: re.Pattern, label: str, masked: list[str]) -> str:
    """Mask the value (string, number, list or object) that follows a quoted JSON/Python key."""
    out, pos = [], 0
    for match in key_re.finditer(text):
        if match.start() < pos:
            continue
        start = match.end()
        end = _scan_value(text, start)
        value = text[start:end]
        inner = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
        if not inner.strip() or _is_placeholder(inner):
            continue
        quote = value[0] if inner is not value else ""
        out.append(text[pos:start] + f"{quote}[{label}]{quote}")
        masked.append(inner)
        pos = end
    out.append(text[pos:])
    return "".join(out)


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


@dataclass
class Evidence:
    """
    Sanitized sibling evidence of one mixed group.

    Args:
        task (`str`): sanitized task instruction (never truncated).
        traces (`list[str]`): sanitized, rendered traces of the selected siblings.
        outcomes (`list[bool]`): outcome of each selected sibling.
        sibling_indices (`list[int]`): positions of the selected siblings within the group.
        masked_literals (`list[str]`): original literals masked anywhere in the group's evidence.
        digest (`str`): sha256 of the sanitized content (cache key, together with the model name).
        steps (`list[list[TraceStep]]`): sanitized structured steps of every sibling (for the contrast builder).
        success (`list[bool]`): outcome of every sibling of the group.
    """

    task: str
    traces: list[str]
    outcomes: list[bool]
    sibling_indices: list[int]
    masked_literals: list[str]
    digest: str
    steps: list[list[TraceStep]] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)


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
