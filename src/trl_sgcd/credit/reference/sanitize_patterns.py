"""What the sanitizer masks: one ordered table of rules, each a label, a pattern and an optional check.

Rules run in table order on the text the previous rules left, and never inside a placeholder already written. Keyed
rules come first (a value after a quoted JSON/Python key such as `"dob":` or `'payment_token':`, or after a keyword
in prose such as "CVV 913", "my password is ..."), so the typed label wins over the generic shapes (cards by Luhn,
IBANs by checksum, payment-method ids such as `credit_card_4196779`, emails, phone numbers, SSN shapes, street
addresses with the unit line next to them, "City, ST 12345", full dates with a birth-year) that run after the private
dataset values.
The README's privacy table lists every category with an example; `tests/credit/test_sanitizer.py` checks each one.

Where a well-kept library covers a case, its detector is used (imported lazily, on the first call):
- `detect-secrets`' plugins find cloud and SaaS keys (AWS, Azure, GitHub, GitLab, Slack, Stripe, Twilio, SendGrid,
  npm, PyPI, Discord, Telegram, ...), JWTs (decoded), basic-auth URLs, private-key blocks (PGP, SSH2, PuTTY) and
  high-entropy strings (its own charsets and limits; quoted, and unquoted runs of `ENTROPY_MIN_CHARS` or more);
- `phonenumbers` (libphonenumber) finds phone numbers in international and national formats, validated against its
  numbering plans (bare digit runs are left to the keyed rule: a τ² item id is a valid-looking US number);
- `python-stdnum` checks card numbers (Luhn), IBANs (country formats and lengths, mod 97) and national ids (Brazil's
  CPF, Canada's SIN, India's Aadhaar, Italy's codice fiscale, Spain's DNI and NIE).
Our own patterns remain where no library covers the case: keyed JSON fields, CVV/PIN and password prose, expiry and
birth dates, "last four", payment-method ids, addresses, emails, US SSN shapes, evaluator output, `sk-`/`hf_` tokens
and PEM bodies, and phone shapes that libphonenumber rejects (fictional 555 numbers still identify a fixture).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable
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
        pattern (`re.Pattern` or `None`): what to find (`None` with `find`).
        group (`int` or `str`, *optional*, defaults to `0`): the part of a match that is masked.
        check (`Callable[[str], bool | int]` or `None`, *optional*): rejects a candidate (`False`) or keeps only a
            valid prefix of it (an `int` length).
        quoted_key (`bool`, *optional*, defaults to `False`): the pattern matches a quoted key; the JSON/Python value
            after it (string, number, list or object) is masked whole.
        find (`Callable[[str], Iterable[tuple[int, int]]]` or `None`, *optional*): a library detector in place of
            `pattern`: the `(start, end)` spans to mask.
    """

    label: str
    pattern: re.Pattern | None = None
    group: int | str = 0
    check: Callable[[str], bool | int] | None = None
    quoted_key: bool = False
    find: Callable[[str], Iterable[tuple[int, int]]] | None = None


def _quoted(keys: str) -> re.Pattern:
    return re.compile(r"(?i)([\"'])(?:" + keys + r")\1\s*:\s*")


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum of payment cards (`stdnum.luhn`)."""
    from stdnum import luhn

    return luhn.is_valid(digits)


def _iban_ok(compact: str) -> bool:
    """A valid IBAN: its country's format and length, and the mod-97 check (`stdnum.iban`)."""
    from stdnum import iban

    return iban.is_valid(compact)


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
# tokens detect-secrets has no plugin for (OpenAI/Anthropic keys without OpenAI's "T3BlbkFJ" marker, Hugging Face),
# or checks more narrowly (Slack tokens without its digit groups, JWT-shaped tokens whose parts are not JSON)
TOKEN_RE = re.compile(
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{16,}|\bxox[abpr]-[A-Za-z0-9-]{10,}"
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


# --- well-kept libraries -----------------------------------------------------------------------------------------------
ENTROPY_MIN_CHARS = 20
"""Unquoted runs shorter than this are not entropy-checked (quoted strings are, as `detect-secrets` does)."""
MIN_SECRET_CHARS = 6
"""A detected secret shorter than this (a basic-auth password such as "pass") is masked only where it was found."""
_SKIPPED_PLUGINS = {"IPPublicDetector", "PrivateKeyDetector"}  # an IP is not a secret; key blocks: `find_private_keys`


@functools.cache
def _secret_plugins() -> tuple[list, list]:
    """`detect-secrets`' regex plugins (every one it ships, less `_SKIPPED_PLUGINS`) and its two entropy plugins."""
    import detect_secrets.plugins as package
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString

    classes = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, RegexBasedDetector)
                and obj.__module__ == module.__name__
                and obj.__name__ not in _SKIPPED_PLUGINS
                and not getattr(obj, "__abstractmethods__", None)
            ):
                classes[obj.__name__] = obj
    return [classes[name]() for name in sorted(classes)], [Base64HighEntropyString(), HexHighEntropyString()]


def _word_spans(text: str, value: str) -> Iterable[tuple[int, int]]:
    """Every occurrence of `value` not inside a longer word; a value that ends in punctuation (a JWT reported up to
    its last dot) runs on to the end of the token."""
    head = r"(?<![A-Za-z0-9])" if value[0].isalnum() else ""
    tail = r"(?![A-Za-z0-9])" if value[-1].isalnum() else r"[A-Za-z0-9_\-.+/=]*"
    return (m.span() for m in re.finditer(head + re.escape(value) + tail, text))


def find_library_secrets(text: str) -> list[tuple[int, int]]:
    """Spans of what `detect-secrets`' plugins report: keys and tokens, JWTs, basic-auth passwords, and strings above
    its entropy limits (quoted, or unquoted and at least `ENTROPY_MIN_CHARS` long). The plugins are called on the
    string only (`analyze_string`: no verification request is ever sent)."""
    regex_plugins, entropy_plugins = _secret_plugins()
    values = set()
    for plugin in regex_plugins:
        values.update(v for v in plugin.analyze_string(text) if v)
    for plugin in entropy_plugins:
        found = set(plugin.analyze_string(text))
        with plugin.non_quoted_string_regex(is_exact_match=False):
            found.update(v for v in plugin.analyze_string(text) if len(v) >= ENTROPY_MIN_CHARS)
        # an n-character string has at most log2(n) bits: shorter ones cannot pass the limit (and cost a count each)
        shortest = 2**plugin.entropy_limit
        values.update(
            v for v in found if len(v) > shortest and plugin.calculate_shannon_entropy(v) > plugin.entropy_limit
        )
    spans = []
    for value in values:
        if len(value) >= MIN_SECRET_CHARS:
            spans.extend(_word_spans(text, value))
        else:  # a short password: only inside the match that reported it (e.g. `https://user:pass@host`)
            spans.extend(m.span(1) for m in re.finditer(r"://[^\s:/@]+:(" + re.escape(value) + r")@", text))
    return spans


def find_private_keys(text: str) -> list[tuple[int, int]]:
    """Private-key blocks that `detect-secrets`' `PrivateKeyDetector` recognises (PGP, SSH2, PuTTY, PEM), from the
    line of the marker to its END line, or to the end of the text."""
    from detect_secrets.plugins.private_key import PrivateKeyDetector

    spans = []
    for marker in PrivateKeyDetector.denylist:
        for match in marker.finditer(text):
            start = text.rfind("\n", 0, match.start()) + 1
            end_marker = re.compile(r"-----END [^\n]*|\Z").search(text, match.end())
            spans.append((start, end_marker.end()))
    return spans


PHONE_REGION = "US"
"""Region `phonenumbers` assumes for a number written without a country code (τ² is a US benchmark)."""


def find_phone_numbers(text: str) -> list[tuple[int, int]]:
    """Spans of the phone numbers `phonenumbers` finds and validates (leniency VALID), less bare digit runs and
    arithmetic (a τ² task's "256.67 - 226.49" is a valid-looking number to libphonenumber)."""
    import phonenumbers

    spans = []
    for candidate in _PHONE_CANDIDATE_RE.finditer(text):  # the matcher is pure Python: only where digits cluster
        if sum(c.isdigit() for c in candidate.group(0)) < 7:
            continue
        for m in phonenumbers.PhoneNumberMatcher(
            candidate.group(0), PHONE_REGION, leniency=phonenumbers.Leniency.VALID
        ):
            if not m.raw_string.isdigit() and not _ARITHMETIC_RE.search(m.raw_string):
                spans.append((candidate.start() + m.start, candidate.start() + m.end))
    return spans


_PHONE_CANDIDATE_RE = re.compile(r"[+(]?\d[\d \t().\-/x]{5,}\d(?:[ \t]*(?:ext\.?|x)[ \t]*\d+)?")

_ARITHMETIC_RE = re.compile(r"\d\.\d{1,2}[ \t]+[-+*/x=][ \t]+\d")


def _stdnum(module: str) -> Callable[[str], bool]:
    def valid(candidate: str) -> bool:
        return importlib.import_module(f"stdnum.{module}").is_valid(candidate)

    return valid


# national ids with a checksum, by shape (separators required where the bare digits would be too common)
NATIONAL_IDS = (
    (re.compile(r"(?<![\w.-])\d{3}\.\d{3}\.\d{3}-\d{2}(?![\w-])"), _stdnum("br.cpf")),
    (re.compile(r"(?<![\w-])\d{3}([ -])\d{3}\1\d{3}(?![\w-])"), _stdnum("ca.sin")),
    (re.compile(r"(?<![\w-])[2-9]\d{3}([ -])\d{4}\1\d{4}(?![\w-])"), _stdnum("in_.aadhaar")),
    (re.compile(r"\b[A-Z]{6}\d{2}[A-EHLMPR-T]\d{2}[A-Z]\d{3}[A-Z]\b"), _stdnum("it.codicefiscale")),
    (re.compile(r"(?<![\w-])\d{8}-?[A-Z](?![\w-])"), _stdnum("es.dni")),
    (re.compile(r"(?<![\w-])[XYZ]-?\d{7}-?[A-Z](?![\w-])"), _stdnum("es.nie")),
)


def find_national_ids(text: str) -> list[tuple[int, int]]:
    """Spans of national ids whose checksum `python-stdnum` accepts."""
    return [m.span() for pattern, valid in NATIONAL_IDS for m in pattern.finditer(text) if valid(m.group(0))]


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
    Rule("SECRET", find=find_private_keys),
    Rule("SECRET", find=find_library_secrets),
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
    Rule("SSN", find=find_national_ids),
    Rule("EMAIL", EMAIL_RE),
    Rule("PHONE", PHONE_KV_RE, "v"),
    Rule("PHONE", find=find_phone_numbers),
    Rule("PHONE", PHONE_RE, check=_digits_between(7, 15)),
    Rule("ADDRESS", STREET_RE),
    Rule("ADDRESS", ADDRESS_UNIT_RE, "v"),
    Rule("ADDRESS", CITY_STATE_ZIP_RE),
    Rule("DOB", BARE_DATE_RE, check=_birth_year),
)
"""Rules that run after the private dataset values (the shape of the value alone gives it away)."""
