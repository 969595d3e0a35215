"""What the sanitizer masks: one ordered table of rules, each a label, a pattern and an optional check.

Rules run in table order on the text the previous rules left, and never inside a placeholder already written. Keyed
rules come first (a value after a quoted JSON/Python key such as `"dob":` or `'payment_token':`, or after a keyword
in prose such as "CVV 913", "my password is ..."), so the typed label wins over the generic shapes (cards by Luhn,
IBANs by checksum, payment-method ids such as `credit_card_4196779`, emails, phone numbers, SSN shapes, street
addresses with the unit line next to them, "City, ST 12345", full dates with a birth-year) that run after the private
dataset values.
The README's privacy table lists every category with an example; `tests/credit/test_sanitizer.py` checks each one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

PLACEHOLDERS = (
    "SECRET",
    "CARD",
    "EXPIRY",
    "IBAN",
    "ACCOUNT",
    "SSN",
    "PASSPORT",
    "DOB",
    "ADDRESS",
    "EMAIL",
    "PHONE",
    "EVALUATOR",
    "PRIVATE",
)


@dataclass(frozen=True)
class Rule:
    """
    One masking rule.

    Args:
        label (`str`): placeholder label (`[label]` replaces the value).
        pattern (`re.Pattern`): what to find.
        group (`int` or `str`, *optional*, defaults to `0`): the part of a match that is masked.
        check (`Callable[[str], bool | int]` or `None`, *optional*): rejects a candidate (`False`) or keeps only a
            valid prefix of it (an `int` length).
        quoted_key (`bool`, *optional*, defaults to `False`): the pattern matches a quoted key; the JSON/Python value
            after it (string, number, list or object) is masked whole.
    """

    label: str
    pattern: re.Pattern
    group: int | str = 0
    check: Callable[[str], bool | int] | None = None
    quoted_key: bool = False


def _quoted(keys: str) -> re.Pattern:
    return re.compile(r"(?i)([\"'])(?:" + keys + r")\1\s*:\s*")


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum of payment cards."""
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


def iban_prefix(candidate: str) -> int | bool:
    """Length of the longest valid IBAN prefix of `candidate` (cut at group boundaries), or False."""
    parts = candidate.split(" ")
    for k in range(len(parts), 0, -1):
        if _iban_ok("".join(parts[:k])):
            return len(" ".join(parts[:k]))
    return False


# --- keys and keywords -------------------------------------------------------------------------------------------------
EVAL_KEYS = (
    r"(?:evaluator|oracle|grader|judge|verifier)(?:[ _-]?(?:report|output|result|feedback|verdict|notes?))?"
    r"|gold(?:[ _-]?(?:answer|actions?|label|output|solution|reference|response))?"
    r"|expected[ _-]?(?:answer|output|actions?|result)|ground[ _-]?truth|reward(?:[ _-]?(?:report|info))?"
)
SECRET_KEYS = (
    r"password|passwd|pwd|passphrase|passcode|client[ _-]?secret|secret(?:[ _-]?(?:access[ _-]?)?key)?"
    r"|api[ _-]?key|apikey|access[ _-]?key(?:[ _-]?id)?|private[ _-]?key"
    r"|(?:access|auth|refresh|api|bearer|session|id)[ _-]?token|token|pin|cvv2?|cvc2?|security[ _-]?code"
)
# any key *containing* token / secret / password (payment_token, authToken, db_password), or a whole segment
# pin / cvv / cvc / pwd (not "shipping", not "max_tokens", not "tokenizer")
_SECRET_FIELD = (
    r"[\w .-]*(?:token(?!s|iz)|secret|passw(?:or)?d|passphrase|passcode|api[ _-]?key|apikey|private[ _-]?key)[\w .-]*"
    r"|(?:[\w .-]*[_ .-])?(?:pin|cvv2?|cvc2?|pwd|security[ _-]?code)(?:[_ .-][\w .-]*)?"
)
_DOB_FIELD = r"date[ _-]?of[ _-]?birth|dateofbirth|dob|birth[ _-]?date|birthdate|birthday"
_ADDRESS_FIELD = (
    r"(?:(?:home|billing|shipping|mailing|street|postal|delivery|residential|user)[ _-]?)?address"
    r"(?:[ _-]?(?:line)?[ _-]?\d)?|street(?:[ _-]?address)?|addr\d?"
)
_EXPIRY_FIELD = r"(?:card[ _-]?)?exp(?:iry|iration)?(?:[ _-]?(?:date|month|year|mm|yy|yyyy))?"
_PASSPORT_FIELD = r"passport(?:[ _-]?(?:number|no|num|nr|id))?"
_LAST_FOUR_FIELD = r"(?:card[ _-]?)?last[ _-]?(?:four|4)(?:[ _-]?digits)?"
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DATE = (
    r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})"
    r"|\d{1,2}(?:st|nd|rd|th)?[ \t]+(?:of[ \t]+)?" + _MONTH + r",?[ \t]+\d{4}"
    r"|" + _MONTH + r"[ \t]+\d{1,2}(?:st|nd|rd|th)?,?[ \t]+\d{4}"
)
_GAP = r"[\"']?[ \t]*[:=#,]?[ \t]*"  # between a keyword and its value: `dob: `, `"ssn": "`, `CVV `
_STREET_TYPE = (
    r"(?i:street|st|avenue|ave|road|rd|drive|dr|lane|ln|boulevard|blvd|court|ct|way|place|pl|terrace|circle"
    r"|parkway|pkwy|highway|hwy|square|trail|alley|plaza|crescent)"
)
_NAMED_STREET = r"(?i:broadway|boardwalk)"  # streets with no type word ("934 Broadway", 111 τ² addresses)

# --- patterns ----------------------------------------------------------------------------------------------------------
PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
EVAL_LINE_RE = re.compile(r"(?im)^[ \t>*#-]*(?:" + EVAL_KEYS + r")[ \t]*[:=][ \t]*(?P<v>\S[^\n]*)$")
SECRET_KV_RE = re.compile(
    r"(?i)(?<![\w\"'])(?:[\w-]*[_-])?(?:" + SECRET_KEYS + r")(?:[_-]\w+)?[ \t]*[:=][ \t]*(?P<v>[^\s,;'\"}\])]+)"
)
_PASSWORD_WORD = r"(?i)\b(?:password|passwd|pwd|passcode|pin(?:[ _-]?(?:code|number))?)\b"
_PROSE_VERB = (
    r"(?:[ \t]+(?:for|of|on|to)[ \t]+(?:(?:the|my|your|our|this)[ \t]+)?[\w.@-]+)?"
    r"[ \t]+(?:is|was|reads|will[ \t]+be|=)[ \t]+(?:now[ \t]+|still[ \t]+)?"
)
PASSWORD_QUOTED_RE = re.compile(
    r"(?i)\b(?:pass(?:word|phrase|code)|passwd|pwd|pin)\b" + _PROSE_VERB + r"([\"'`])(?P<v>[^\n]{1,200}?)\1"
)
PASSWORD_PROSE_RE = re.compile(_PASSWORD_WORD + _PROSE_VERB + r"(?P<v>[^\s\"'`]+?)(?=[.,;:?)]*(?:\s|$))")
PASSPHRASE_PROSE_RE = re.compile(r"(?i)\bpassphrase\b" + _PROSE_VERB + r"(?P<v>[^\s\"'`][^\n.;,]{0,200})")
CVV_RE = re.compile(
    r"(?i)\b(?:cvv2?|cvc2?|security[ _-]?code|card[ _-]?(?:verification|security)(?:[ _-]?(?:code|value|number))?)"
    r"\b[^\d\n]{0,20}?(?<!\d)(?P<v>\d{3,4})(?!\d)"
)
EXPIRY_RE = re.compile(
    r"(?i)\b(?:exp(?:iry|iration|ires|ired)?\.?(?:[ _-]?date)?|valid[ _-]?(?:thru|through|until|till))\b"
    + _GAP
    + r"(?:(?:on|is|in|at)[ \t]+)?[\"']?(?P<v>(?:0?[1-9]|1[0-2])[ \t]?[/-][ \t]?(?:20)?\d{2})(?![\d/])"
)
DOB_RE = re.compile(
    r"(?i)\b(?:date[ _-]?of[ _-]?birth|d\.?o\.?b\.?|birth[ _-]?(?:date|day)|birthdate|birthday|born(?:[ \t]+on)?)"
    + _GAP
    + r"(?:(?:is|was|on|of)[ \t]+)?[\"']?(?P<v>"
    + _DATE
    + r")(?![\w/.-]?\d)"
)
SSN_KV_RE = re.compile(
    r"(?i)\b(?:ssn|social[ _-]?security(?:[ _-]?(?:number|no|num))?)\b"
    + _GAP
    + r"(?:is[ \t]+)?[\"']?(?P<v>\d{3}[ -]?\d{2}[ -]?\d{4})(?!\d)"
)
SSN_RE = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
PASSPORT_RE = re.compile(
    r"(?i)\bpassport(?:[ _-]?(?:number|no|num|nr|id))?\.?"
    + _GAP
    + r"(?:(?:is|number)[ \t]+)?[\"']?(?P<v>[A-Z0-9]{6,9})(?!\w)"
)
TOKEN_RE = re.compile(
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{16,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bxox[abpr]-[A-Za-z0-9-]{10,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
BEARER_RE = re.compile(r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9\-._~+/]{8,}=*)")
CARD_RE = re.compile(
    r"(?<![\w-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{5}|\d{13,19})(?![\w-])"
)
IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
ACCOUNT_RE = re.compile(
    r"(?i)\b(?:bank[ _-]?)?(?:account|acct|routing|sort[ _-]?code|aba)(?:[ _-]?(?:number|no|num|nr|id))?\.?[\"']?"
    r"[ \t]*(?:[:=#][ \t]*|is[ \t]+)?[\"']?(?P<v>\d(?:[ -]?\d){4,16})(?![\w-])"
)
EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}|\d{3}([.-])\d{3}\1\d{4}|\d{3} \d{3} \d{4})(?![\w-])"
)
PHONE_KV_RE = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell)(?:[ _-]?(?:number|no))?[\"']?[ \t]*[:=]?[ \t]*"
    r"[\"']?(?P<v>\d{7,15})(?!\w)"
)
# payment-method ids of agent benchmarks (τ²: credit_card_4196779, gift_card_5094406, certificate_8045380, paypal_...)
PAYMENT_ID_RE = re.compile(
    r"(?i)\b(?:credit[ _-]?card|debit[ _-]?card|gift[ _-]?card|certificate|voucher|paypal|bank[ _-]?account"
    r"|apple[ _-]?pay|google[ _-]?pay)_\d{3,}\b"
)
# "ending in 7447", "last four 7447", "last 4 digits: 7447", "last four digits of my visa are 7447"
LAST_FOUR_RE = re.compile(
    r"(?i)\b(?:ending(?:[ \t]+(?:in|with))?|ends[ \t]+(?:in|with)|last[ \t_-]*(?:four|4)(?:[ \t_-]*digits?)?"
    r"(?:[ \t]+(?:of|on)[ \t]+(?:(?:the|my|your|this|that|a)[ \t]+)?[a-z]+(?:[ \t]+card)?)?)"
    r"[\"']?[ \t]*(?:[:=#]|\b(?:is|are|was|were|of)\b)?[ \t]*[\"']?(?P<v>\d{4})(?![\d/-])"
)
US_STATES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK OR "
    "PA RI SC SD TN TX UT VT VA WA WV WI WY PR"
).split()
_ZIP = r"\d{5}(?:-\d{4})?"
_CITY = r"[A-Z][A-Za-z.'-]*(?:[ \t]+[A-Z][A-Za-z.'-]*){0,2}"
_STATE = r"(?:" + "|".join(US_STATES) + r")"
_UNIT = r"(?i:suite|ste|apt|apartment|unit)\.?[ \t]*#?[A-Za-z0-9-]*\d[A-Za-z0-9-]*"
# "Austin, TX 78750", "Seattle WA 98187", "Seattle, WA, 98193": a city, a US state code and a zip code
CITY_STATE_ZIP_RE = re.compile(r"\b" + _CITY + r",?[ \t]+" + _STATE + r",?[ \t]+" + _ZIP + r"(?!\d)")
# a unit line next to a masked street line: "[ADDRESS], Suite 217", "[PRIVATE]\nApt 4B", "[ADDRESS], address2: Ste 5"
ADDRESS_UNIT_RE = re.compile(
    r"(?:(?<=\[ADDRESS\])|(?<=\[PRIVATE\]))[,(]?[ \t]*\n?[ \t]*(?:(?i:address)[ _-]?(?:line[ _-]?)?2[\"']?[ \t]*[:=]?[ \t]*)?"
    r"[\"']?(?P<v>" + _UNIT + r")"
)
# a full date with a four-digit year before DOB_BEFORE_YEAR, anywhere: a date of birth (benchmarks' own dates,
# flights and orders, are recent and stay readable)
DOB_BEFORE_YEAR = 2010
BARE_DATE_RE = re.compile(r"(?<![\w/.-])(?:" + _DATE + r")(?![\w/.-]?\d)")
STREET_RE = re.compile(
    r"\b\d{1,6}[A-Za-z]?(?:(?:[ \t]+(?:[A-Z][A-Za-z'.-]*|\d+(?:st|nd|rd|th))){1,4}[ \t]+"
    + _STREET_TYPE
    + r"|[ \t]+"
    + _NAMED_STREET
    + r")\b\.?"
    r"(?:,?[ \t]+(?i:suite|ste|apt|apartment|unit)\.?[ \t]*#?[A-Za-z0-9-]+|,?[ \t]+#[A-Za-z0-9-]+)?"
)


def _has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


def _birth_year(text: str) -> bool:
    """Whether a date has a four-digit year from 1900 up to (not including) `DOB_BEFORE_YEAR`."""
    years = [int(y) for y in re.findall(r"(?<!\d)\d{4}(?!\d)", text)]
    return bool(years) and 1900 <= years[-1] < DOB_BEFORE_YEAR


def _digits_between(lo: int, hi: int) -> Callable[[str], bool]:
    return lambda s: lo <= sum(c.isdigit() for c in s) <= hi


KEYED_RULES = (
    Rule("SECRET", PEM_RE),
    Rule("EVALUATOR", _quoted(EVAL_KEYS), quoted_key=True),
    Rule("EVALUATOR", EVAL_LINE_RE, "v"),
    Rule("SECRET", _quoted(_SECRET_FIELD), quoted_key=True),
    Rule("DOB", _quoted(_DOB_FIELD), quoted_key=True),
    Rule("ADDRESS", _quoted(_ADDRESS_FIELD), quoted_key=True),
    Rule("EXPIRY", _quoted(_EXPIRY_FIELD), quoted_key=True),
    Rule("PASSPORT", _quoted(_PASSPORT_FIELD), quoted_key=True),
    Rule("CARD", _quoted(_LAST_FOUR_FIELD), quoted_key=True),
    Rule("SECRET", PASSWORD_QUOTED_RE, "v"),
    Rule("SECRET", PASSPHRASE_PROSE_RE, "v"),
    Rule("SECRET", SECRET_KV_RE, "v"),
    Rule("SECRET", PASSWORD_PROSE_RE, "v"),
    Rule("SECRET", CVV_RE, "v"),
    Rule("SECRET", BEARER_RE, "v"),
    Rule("SECRET", TOKEN_RE),
    Rule("EXPIRY", EXPIRY_RE, "v"),
    Rule("DOB", DOB_RE, "v"),
    Rule("SSN", SSN_KV_RE, "v"),
    Rule("PASSPORT", PASSPORT_RE, "v", check=_has_digit),
    Rule("CARD", LAST_FOUR_RE, "v"),
)
"""Rules that run before the private dataset values (a keyword or key types the value)."""

SHAPE_RULES = (
    Rule("IBAN", IBAN_RE, check=iban_prefix),
    Rule("CARD", CARD_RE, check=lambda s: luhn_ok(re.sub(r"\D", "", s))),
    Rule("ACCOUNT", ACCOUNT_RE, "v"),
    Rule("ACCOUNT", PAYMENT_ID_RE),
    Rule("SSN", SSN_RE),
    Rule("EMAIL", EMAIL_RE),
    Rule("PHONE", PHONE_KV_RE, "v"),
    Rule("PHONE", PHONE_RE, check=_digits_between(7, 15)),
    Rule("ADDRESS", STREET_RE),
    Rule("ADDRESS", ADDRESS_UNIT_RE, "v"),
    Rule("ADDRESS", CITY_STATE_ZIP_RE),
    Rule("DOB", BARE_DATE_RE, check=_birth_year),
)
"""Rules that run after the private dataset values (the shape of the value alone gives it away)."""
