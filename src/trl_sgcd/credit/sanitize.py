"""The sanitizer: everything the external LLM (or the offline contrast builder) sees passes through [`Sanitizer`].

Credentials, payment and account values, contact details, evaluator/oracle output and private dataset values (gold
answers, gold actions) are replaced by typed placeholders, and the masked literals are returned so that their tokens
get zero credit later (paper, Appendix B, "Leakage and literal masking"). Callers sanitize before any truncation, so
a secret cut in half can never slip through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PLACEHOLDERS",
    "PLACEHOLDER_RE",
    "SanitizedText",
    "Sanitizer",
    "flatten_values",
    "private_values",
    "sanitize",
]

PLACEHOLDERS = ("SECRET", "CARD", "IBAN", "ACCOUNT", "EMAIL", "PHONE", "EVALUATOR", "PRIVATE")
PLACEHOLDER_RE = re.compile(r"\[(" + "|".join(PLACEHOLDERS) + r")\]")
"""A placeholder such as `[CARD]`; group 1 is its label."""
MIN_PRIVATE_CHARS = 3

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
    return not PLACEHOLDER_RE.sub("", text).strip(" \t\n\"',;:")


def _iban_prefix(candidate: str) -> int | bool:
    """Length of the longest valid IBAN prefix of `candidate` (cut at group boundaries), or False."""
    parts = candidate.split(" ")
    for k in range(len(parts), 0, -1):
        if _iban_ok("".join(parts[:k])):
            return len(" ".join(parts[:k]))
    return False


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
