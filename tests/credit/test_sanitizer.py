"""Sanitizer: each masked category, the negatives that must stay, private values, idempotence."""

import pytest

from trl_sgcd.credit.sanitize import Sanitizer, sanitize


def _check(text, placeholder, literal, **kwargs):
    result = sanitize(text, **kwargs)
    assert placeholder in result.text, result.text
    assert literal not in result.text
    assert literal in result.masked
    return result


@pytest.mark.parametrize(
    "literal",
    [
        "sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2",
        "sk-abcdefghijklmnopqrstuvwxyz12",
        "hf_AbCdEfGhIjKlMnOpQrStUv",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    ],
)
def test_api_keys(literal):
    _check(f"the key is {literal} ok", "[SECRET]", literal)


def test_bearer_token():
    _check("Authorization: Bearer abc.def-123_XYZ456", "[SECRET]", "abc.def-123_XYZ456")


@pytest.mark.parametrize(
    "text, literal",
    [
        ("password: hunter2", "hunter2"),
        ("password=hunter2;", "hunter2"),
        ('{"password": "hun ter2"}', "hun ter2"),
        ("{'api_key': 'abcd1234'}", "abcd1234"),
        ("PIN: 4321", "4321"),
        ('"cvv": 123', "123"),
    ],
)
def test_password_like_values(text, literal):
    result = _check(text, "[SECRET]", literal)
    assert result.text.lower().startswith(text[:4].lower())  # the key itself stays readable


def test_pem_private_key():
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    result = _check(f"key:\n{pem}\nend", "[SECRET]", pem)
    assert "MIIEvQ" not in result.text


@pytest.mark.parametrize(
    "card",
    ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "378282246310005", "5555 5555 5555 4444"],
)
def test_luhn_valid_cards(card):
    _check(f"paid with {card}.", "[CARD]", card)


def test_non_luhn_number_is_kept():
    result = sanitize("order 1234567812345678 and 4111 1111 1111 1112")
    assert result.text == "order 1234567812345678 and 4111 1111 1111 1112"
    assert result.masked == []


@pytest.mark.parametrize(
    "iban", ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "FR1420041010050500013M02606"]
)
def test_iban(iban):
    _check(f"transfer to {iban} today", "[IBAN]", iban)


def test_invalid_iban_is_kept():
    assert sanitize("code GB00 WEST 1234 5698 7654 32").masked == []


@pytest.mark.parametrize(
    "text, literal",
    [
        ("account number: 12345678", "12345678"),
        ("routing number is 021000021", "021000021"),
        ('{"account_number": "9876543210"}', "9876543210"),
        ("acct # 55501234", "55501234"),
    ],
)
def test_account_and_routing_numbers(text, literal):
    _check(text, "[ACCOUNT]", literal)


def test_email():
    _check("write to mia.li+air@example.co.uk please", "[EMAIL]", "mia.li+air@example.co.uk")


@pytest.mark.parametrize(
    "phone", ["+1 415 555 0123", "(415) 555-0123", "415-555-0123", "+44 20 7946 0958", "415.555.0123"]
)
def test_phone(phone):
    _check(f"call {phone} now", "[PHONE]", phone)


def test_phone_after_phone_word():
    _check('"phone": "4155550123"', "[PHONE]", "4155550123")


@pytest.mark.parametrize(
    "text, literal",
    [
        ("evaluator: task passed, db hash ok", "task passed, db hash ok"),
        ("Oracle output: refund 345", "refund 345"),
        ("reward: 1.0", "1.0"),
        ("gold_answer = Paris", "Paris"),
        ('{"expected_answer": {"city": "Paris"}, "x": 1}', '{"city": "Paris"}'),
        ("{'gold_actions': [{'name': 'cancel'}], 'ok': True}", "[{'name': 'cancel'}]"),
    ],
)
def test_evaluator_output(text, literal):
    _check(text, "[EVALUATOR]", literal)


def test_evaluator_json_keeps_other_fields():
    result = sanitize('{"expected_answer": "Paris", "status": "ok"}')
    assert result.text == '{"expected_answer": "[EVALUATOR]", "status": "ok"}'


def test_private_values_case_insensitive_and_nested():
    sanitizer = Sanitizer(["Paris, France", 34512, {"id": "ZFA04Y", "n": 7}, ["gold route"], None, True, "ab"])
    result = sanitizer("The answer: paris, france. Reservation zfa04y costs 34512; GOLD ROUTE; ab stays; 7 stays")
    assert result.text == (
        "The answer: [PRIVATE]. Reservation [PRIVATE] costs [PRIVATE]; [PRIVATE]; ab stays; 7 stays"
    )
    assert set(result.masked) == {"paris, france", "zfa04y", "34512", "GOLD ROUTE"}


def test_private_values_respect_word_edges_and_keep():
    sanitizer = Sanitizer(["yes", "cancel_reservation"], keep=["cancel_reservation"])
    assert sanitizer("yesterday yes cancel_reservation").text == "yesterday [PRIVATE] cancel_reservation"


@pytest.mark.parametrize(
    "text",
    [
        "flight HAT123 departs 2024-05-01 at 10:30",
        "3 bags, $250, seat 14C, order #4412",
        "version 1.2.3, 15:45:00",
        "user mia_li_3668 has 2 reservations",
        "total 1234567 points",
        "ZIP 94103, year 2024",
    ],
)
def test_ordinary_text_is_kept(text):
    result = sanitize(text)
    assert result.text == text and result.masked == []


def test_idempotent_on_everything():
    text = (
        "card 4111 1111 1111 1111, key sk-abcdefghijklmnopqrstuv, password: p@ss, mail a@b.io, "
        "call +1 415 555 0123, IBAN GB82 WEST 1234 5698 7654 32, account number 12345678\n"
        "evaluator: ok\n{'gold_answer': 'Paris'} private secret"
    )
    sanitizer = Sanitizer(["Paris", "private", "SECRET", "card"])
    once = sanitizer(text)
    twice = sanitizer(once.text)
    assert twice.text == once.text
    assert twice.masked == []
    assert "[[" not in once.text


def test_masked_literals_are_unique_and_in_order():
    result = sanitize("a@b.io then a@b.io then c@d.io")
    assert result.masked == ["a@b.io", "c@d.io"]
