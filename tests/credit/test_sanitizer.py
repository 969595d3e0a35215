"""Sanitizer: each masked category, the negatives that must stay, private values, idempotence."""

import json
from pathlib import Path

import pytest

from trl_sgcd.credit.reference.sanitize import Sanitizer, sanitize


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


# --- the categories of issue 15: prose forms, birth dates, addresses, expiry, SSN, passports, numeric variants -------
@pytest.mark.parametrize(
    "text, placeholder, literal",
    [
        ("card exp 11/28, CVV 913 thanks", "[SECRET]", "913"),
        ("cvv 123", "[SECRET]", "123"),
        ("my security code is 4567", "[SECRET]", "4567"),
        ("CVC: 321", "[SECRET]", "321"),
        ("card exp 11/28, CVV 913", "[EXPIRY]", "11/28"),
        ("expires 11/2028", "[EXPIRY]", "11/2028"),
        ("valid thru 03-27", "[EXPIRY]", "03-27"),
        ('{"exp_month": 11, "exp_year": 2028}', "[EXPIRY]", "2028"),
        ('{"date_of_birth": "1987-04-12"}', "[DOB]", "1987-04-12"),
        ("{'dob': '1990-04-05'}", "[DOB]", "1990-04-05"),
        ("Kevin Smith, DOB 2001-04-12.", "[DOB]", "2001-04-12"),
        ("DOB 04/12/1987", "[DOB]", "04/12/1987"),
        ("date of birth: 12.04.1987", "[DOB]", "12.04.1987"),
        ("born on April 12, 1987", "[DOB]", "April 12, 1987"),
        ("my birthday is 12th of April 1987", "[DOB]", "12th of April 1987"),
        ("ship it to 975 Sunset Drive, Suite 217, Austin", "[ADDRESS]", "975 Sunset Drive, Suite 217"),
        ("I live at 12 W 3rd Street", "[ADDRESS]", "12 W 3rd Street"),
        ('{"address1": "831 Elm Street", "city": "Washington"}', "[ADDRESS]", "831 Elm Street"),
        ('{"shipping_address": {"street": "1 Main St", "zip": "10001"}}', "[ADDRESS]", "1 Main St"),
        ("my account password is hunter2.", "[SECRET]", "hunter2"),
        ("the password for the portal is 'hun ter2'", "[SECRET]", "hun ter2"),
        ("my passphrase is correct horse battery staple.", "[SECRET]", "correct horse battery staple"),
        ("my PIN is 4321", "[SECRET]", "4321"),
        ('{"payment_token": "tok_1Nv3xA2eZvKYlo"}', "[SECRET]", "tok_1Nv3xA2eZvKYlo"),
        ("{'client_secret': 'abc-123'}", "[SECRET]", "abc-123"),
        ('{"db_password": "pa55"}', "[SECRET]", "pa55"),
        ("authToken=xyz98765", "[SECRET]", "xyz98765"),
        ("payment_token: tok_abc", "[SECRET]", "tok_abc"),
        ('{"payment_id": "credit_card_4196779"}', "[ACCOUNT]", "credit_card_4196779"),
        ("paid with gift_card_5094406 and certificate_8045380", "[ACCOUNT]", "gift_card_5094406"),
        ("paid with gift_card_5094406 and certificate_8045380", "[ACCOUNT]", "certificate_8045380"),
        ('{"brand": "visa", "last_four": "7238"}', "[CARD]", "7238"),
        ("the visa card ending in 7238", "[CARD]", "7238"),
        ("the card with last four 5241", "[CARD]", "5241"),
        ("last 4 digits: 5241.", "[CARD]", "5241"),
        ("the last four digits of my visa are 5241", "[CARD]", "5241"),
        ("Amelia Ahmed (1957-03-21)", "[DOB]", "1957-03-21"),
        ("975 Sunset Drive\nSuite 217", "[ADDRESS]", "Suite 217"),
        ("I live in Seattle, WA, 98193", "[ADDRESS]", "Seattle, WA, 98193"),
        ("SSN 123-45-6789", "[SSN]", "123-45-6789"),
        ("social security number is 123456789", "[SSN]", "123456789"),
        ("it is 078-05-1120, my number", "[SSN]", "078-05-1120"),
        ("passport number is X12345678", "[PASSPORT]", "X12345678"),
        ('{"passport_no": "P1234567"}', "[PASSPORT]", "P1234567"),
    ],
)
def test_issue_15_categories(text, placeholder, literal):
    _check(text, placeholder, literal)


@pytest.mark.parametrize(
    "text",
    [
        "Your birthday is in your user profile so you prefer not to provide it.",
        "You are French by birth and your English is not perfect.",
        "It takes 3 days by the way.",
        '{"max_tokens": 512, "completion_tokens": 20, "tokenizer": "gpt2", "shipping": "fast"}',
        "flight HAT170 on 2024-05-22 expires soon; the certificate expires 2024-06-01",
        "the offer ends 2025; the last 4 flights on 2024-05-22; order placed 2023-11-30",
        "the hotel suite 3 is free",
        "Error: the passport check failed for reservation 4WQ150",
        "pin the seat map; security level 3",
        "order #W2611340 tracking 357962501027, product 8310926033",
        '{"reservation_id": "4WQ150", "flights": [{"flight_number": "HAT271", "date": "2024-05-10"}]}',
        '{"payment_history": [{"payment_id": "[PRIVATE]"}]}, the certificate policy, a gift card balance',
    ],
)
def test_issue_15_lookalikes_stay(text):
    result = sanitize(text)
    assert result.text == text and result.masked == []


@pytest.mark.parametrize(
    "stored, written",
    [
        (312.4, "$312.40"),
        (312.4, "312.400"),
        ("312.40", "312.4 USD"),
        (1234.5, "$1,234.50"),
        (34512, "34,512"),
        (34512, "34512.00"),
        ("$1,000", "1000"),
    ],
)
def test_private_numbers_match_every_written_form(stored, written):
    result = Sanitizer([stored])(f"the refund is {written} today")
    assert result.text == "the refund is [PRIVATE] today", result.text


def test_private_numbers_do_not_match_other_numbers():
    text = "312.45, 1312.4, 3124, 312.41 and 2312.40"
    assert Sanitizer([312.4]).__call__(text).text == text


# --- a real corpus: tau2-bench user profiles, reservations and orders --------------------------------------------------
TAU2 = json.loads((Path(__file__).parent / "data" / "tau2_excerpt.json").read_text())


def _tau2_private_literals():
    """Every DOB, street line and email of the excerpt: none may survive sanitizing."""
    out = []
    for user in TAU2["airline_users"] + TAU2["retail_users"]:
        out += [user["email"], user["address"]["address1"], user["address"]["address2"]]
        out += [user["dob"]] if "dob" in user else []
        out += [p["dob"] for p in user.get("saved_passengers", [])]
    out += [p["dob"] for r in TAU2["airline_reservations"] for p in r["passengers"]]
    out += [o["address"]["address1"] for o in TAU2["retail_orders"]]
    return out


@pytest.mark.parametrize("render", [json.dumps, str], ids=["json", "python-repr"])
def test_tau2_profiles_lose_dobs_addresses_and_emails(render):
    corpus = "\n".join(render(x) for key in TAU2 if key != "_source" for x in TAU2[key] if isinstance(x, dict))
    clean = sanitize(corpus).text
    for literal in _tau2_private_literals() + ["credit_card_4421486", "gift_card_3576581"]:  # payment-method ids too
        assert literal not in clean, literal
    for kept in [
        "HAT170",
        "4WQ150",
        "mia_li_3668",
        "2024-05-22",
        "#W2611340",
    ]:
        assert kept in corpus and kept in clean, kept  # ids, flight numbers and flight dates stay readable
    assert "[DOB]" in clean and "[ADDRESS]" in clean and "[EMAIL]" in clean and "[ACCOUNT]" in clean


def test_tau2_task_prose_masks_the_dob_and_keeps_the_rest():
    text = TAU2["airline_task_8_instructions"]["task_instructions"]
    clean = sanitize(text).text
    assert "2001-04-12" not in clean and "Kevin Smith, DOB [DOB]" in clean
    assert "$500" in clean and "Your birthday is in your user profile" in clean
