"""The sanitizer: everything the external LLM (or the offline contrast builder) sees passes through [`Sanitizer`].

Credentials, payment and account values, contact details, evaluator/oracle output and private dataset values (gold
answers, gold actions) are replaced by typed placeholders, and the masked literals are returned so that their tokens
get zero credit later (paper, Appendix B, "Leakage and literal masking"). Callers sanitize before any truncation, so
a secret cut in half can never slip through.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from trl_sgcd.credit.reference.sanitize_patterns import KEYED_RULES, PLACEHOLDERS, SHAPE_RULES, Rule

__all__ = [
    "PLACEHOLDERS",
    "PLACEHOLDER_RE",
    "SanitizedText",
    "Sanitizer",
    "flatten_values",
    "private_values",
    "sanitize",
]

PLACEHOLDER_RE = re.compile(r"\[(" + "|".join(PLACEHOLDERS) + r")\]")
"""A placeholder such as `[CARD]`; group 1 is its label."""
MIN_PRIVATE_CHARS = 3
_NUMERIC_RE = re.compile(
    r"[$€£]?[ \t]*(?P<n>(?:0|[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d*)(?:\.\d+)?)[ \t]*(?:usd|eur|gbp)?", re.I
)


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


def private_values(row: Mapping[str, Any] | None, columns: Iterable[str]) -> dict[str, Any]:
    """
    The private values of one dataset row: `{column: value}` for each of `columns` the row has, `None` left out.

    The one extraction rule for the trainer (which gathers these per row), the reference builder and the sibling
    context; pass the dicts to [`Sanitizer`], which flattens them.
    """
    row = row or {}
    return {c: row[c] for c in columns if row.get(c) is not None}


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
        texts = [v for v in self.private_values if _number_regex(v) is None]  # numbers: every written form, below
        self._private_re = None
        if texts:
            alternation = "|".join(re.escape(v) for v in texts)
            self._private_re = re.compile(r"(?i)(?<![A-Za-z0-9])(?:" + alternation + r")(?![A-Za-z0-9])")
        self._number_re = _numbers_pattern(self.private_values)

    def keeping(self, names: Iterable[str]) -> Sanitizer:
        """A copy that also keeps `names` unmasked."""
        return Sanitizer(self.private_values, keep=set(self.keep) | {n.lower() for n in names})

    def __call__(self, text: Any) -> SanitizedText:
        text = "" if text is None else str(text)
        masked: list[str] = []
        for rule in KEYED_RULES:
            text = _apply(rule, text, masked)
        if self._number_re is not None:  # 312.4 stored, "$312.40", "312.400 USD" or "1,312.4" in the text
            text = _sub(self._number_re, text, "PRIVATE", masked)
        if self._private_re is not None:
            text = _sub(self._private_re, text, "PRIVATE", masked)
        for rule in SHAPE_RULES:
            text = _apply(rule, text, masked)
        return SanitizedText(text=text, masked=list(dict.fromkeys(masked)))


def _apply(rule: Rule, text: str, masked: list[str]) -> str:
    if rule.find is not None:
        return _mask_spans(text, rule.find(text), rule.label, masked)
    if rule.quoted_key:
        return _mask_quoted_values(text, rule.pattern, rule.label, masked)
    return _sub(rule.pattern, text, rule.label, masked, group=rule.group, check=rule.check)


def _number_regex(value: str) -> str | None:
    """A regex for every written form of a numeric private value (`312.4` -> `312.40`, `$312.4`, `1,312.4`...)."""
    match = _NUMERIC_RE.fullmatch(value.strip())
    if match is None:
        return None
    try:
        number = Decimal(match.group("n").replace(",", ""))
    except InvalidOperation:
        return None
    whole, _, fraction = format(number, "f").partition(".")
    fraction = fraction.rstrip("0")
    head, groups = whole[: len(whole) % 3 or 3], [whole[i : i + 3] for i in range(len(whole) % 3 or 3, len(whole), 3)]
    integer = ",?".join([head, *groups])
    return integer + (r"\." + fraction + "0*" if fraction else r"(?:\.0+)?")


def _numbers_pattern(values: list[str]) -> re.Pattern | None:
    alternation = sorted({r for v in values if (r := _number_regex(v)) is not None}, key=lambda r: (-len(r), r))
    if not alternation:
        return None
    return re.compile(
        r"(?<![\w.,$€£])(?:[$€£][ \t]?)?(?:" + "|".join(alternation) + r")(?:[ \t]?(?i:usd|eur|gbp)\b)?(?![\w]|[.,]\d)"
    )


def sanitize(text: Any, *, private_values: Iterable[Any] = ()) -> SanitizedText:
    """Functional form of [`Sanitizer`]."""
    return Sanitizer(private_values)(text)


def _is_placeholder(text: str) -> bool:
    return not PLACEHOLDER_RE.sub("", text).strip(" \t\n\"',;:")


def _sub(pattern: re.Pattern, text: str, label: str, masked: list[str], *, group: int | str = 0, check=None) -> str:
    """Replace `group` of every match with `[label]` unless it is already a placeholder or `check` rejects it."""

    protected = [(m.start(), m.end()) for m in PLACEHOLDER_RE.finditer(text)]

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


def _mask_spans(text: str, spans, label: str, masked: list[str]) -> str:
    """Replace each of `spans` (overlapping ones merged) with `[label]`; a placeholder inside a span stays as it is and
    the pieces around it are masked."""
    protected = [(m.start(), m.end()) for m in PLACEHOLDER_RE.finditer(text)]
    pieces = []
    for lo, hi in spans:
        for s, e in protected:
            if s < hi and lo < e:
                pieces.append((lo, s))
                lo = max(lo, e)
        pieces.append((lo, hi))
    merged: list[list[int]] = []
    for lo, hi in sorted(pieces):
        if not any(c.isalnum() for c in text[lo:hi]):
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    out, pos = [], 0
    for lo, hi in merged:
        masked.append(text[lo:hi])
        out.append(text[pos:lo] + f"[{label}]")
        pos = hi
    out.append(text[pos:])
    return "".join(out)


def _leaves(literal: str) -> list[str]:
    for parse in (json.loads, ast.literal_eval):
        try:
            return flatten_values(parse(literal))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return []


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
        if label != "EVALUATOR" and inner[:1] in "[{":  # an address object: its lines too, for the credit mask
            masked.extend(v for v in _leaves(inner) if len(v) >= MIN_PRIVATE_CHARS)
        pos = end
    out.append(text[pos:])
    return "".join(out)
