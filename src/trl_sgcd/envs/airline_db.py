"""Synthetic database of the mini airline environment, generated deterministically from a seed.

The database is plain JSON-compatible data (dicts, lists, strings, ints, bools), so it can be deep-copied, compared
with `==` and dumped into tool observations. Written for trl-sgcd in the spirit of tau-bench's airline domain (users,
flights, reservations, payment methods); nothing is copied from it. Money is in whole dollars. Observations carry
realistic sensitive values (Luhn-valid card numbers, e-mails, phone numbers, birth dates) on purpose: the SGCD evidence
sanitizer must mask them before sibling traces reach an external LLM.

Layout:

```
{"meta": {"seed": int, "now": "2026-05-05T12:00:00", "next_reservation": int},
 "users": {user_id: {"user_id", "name": {"first_name", "last_name"}, "email", "phone", "dob", "membership",
                     "payment_methods": {payment_id: {"source": "credit_card", "brand", "card_number", "expiry"}
                                                   | {"source": "gift_card", "balance"}
                                                   | {"source": "certificate", "amount"}},
                     "reservations": [reservation_id, ...]}},
 "flights": {flight_number: {"flight_number", "origin", "destination", "date", "departure_time", "arrival_time",
                             "status", "available_seats": {cabin: int}, "prices": {cabin: int}}},
 "reservations": {reservation_id: {"reservation_id", "user_id", "origin", "destination", "trip_type",
                                   "flights": [{"flight_number", "origin", "destination", "date", "price"}],
                                   "cabin", "passengers": [{"first_name", "last_name", "dob"}],
                                   "payment_history": [{"payment_id", "amount"}], "insurance", "status",
                                   "created_at"}}}
```
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta
from functools import lru_cache

NOW = "2026-05-05T12:00:00"
"""The environment's fixed current time: the 24-hour cancellation rule is measured from it."""

CABINS = ("basic_economy", "economy", "business")
AIRPORTS = ("JFK", "LAX", "SFO", "ORD", "SEA", "BOS", "ATL", "DFW", "MIA", "DEN", "PHX", "LAS")
FLIGHT_DATES = tuple((date(2026, 5, 6) + timedelta(days=i)).isoformat() for i in range(8))
INSURANCE_PRICE = 30
FLIGHT_STATUSES = ("on time", "delayed", "cancelled")

_FIRST_NAMES = (
    "Mia",
    "Noah",
    "Olivia",
    "Liam",
    "Ava",
    "Ethan",
    "Sofia",
    "Lucas",
    "Amelia",
    "Mason",
    "Harper",
    "Yusuf",
    "Aisha",
    "Mei",
    "Raj",
    "Lena",
    "Omar",
    "Chloe",
    "Ivan",
    "Zara",
    "Diego",
    "Hana",
    "Kofi",
    "Elena",
    "Tariq",
    "Nora",
    "Sven",
    "Priya",
    "Mateo",
    "Ingrid",
)
_LAST_NAMES = (
    "Li",
    "Garcia",
    "Smith",
    "Khan",
    "Patel",
    "Nguyen",
    "Kim",
    "Silva",
    "Muller",
    "Rossi",
    "Ito",
    "Okafor",
    "Haddad",
    "Novak",
    "Larsen",
    "Cohen",
    "Moreno",
    "Brown",
    "Sato",
    "Ahmed",
    "Jensen",
    "Lopez",
    "Wright",
    "Costa",
    "Kowalski",
)
_EMAIL_DOMAINS = ("example.com", "mail.example.org", "inbox.example.net")
_AREA_CODES = ("212", "415", "312", "206", "617", "404", "214", "305", "303", "602", "702", "646")
_CARD_PREFIXES = {"visa": ("4",), "mastercard": ("51", "52", "53", "54", "55")}
_PRICE_RANGES = {"basic_economy": (50, 150), "economy": (120, 300), "business": (400, 1200)}


def luhn_check_digit(partial: str) -> str:
    """Check digit that makes `partial + digit` pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the digit left of the check digit
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """Whether a digit string passes the Luhn checksum."""
    return number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def _card_number(rng: random.Random, brand: str) -> str:
    prefix = rng.choice(_CARD_PREFIXES[brand])
    body = prefix + "".join(rng.choice("0123456789") for _ in range(15 - len(prefix)))
    return body + luhn_check_digit(body)


def _payment_id(rng: random.Random, source: str, taken: set[str]) -> str:
    while True:
        pid = f"{source}_{rng.randrange(1_000_000, 10_000_000)}"
        if pid not in taken:
            taken.add(pid)
            return pid


def reservation_code(seed: int, counter: int, taken) -> str:
    """A 6-character reservation id, a function of (seed, counter) only, avoiding ids in `taken`."""
    rng = random.Random(f"airline-reservation-{seed}-{counter}")
    while True:
        code = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6))
        if code not in taken:
            return code


def _make_flights(rng: random.Random) -> dict:
    routes = set()
    while len(routes) < 10:  # 10 airport pairs, both directions flown
        a, b = rng.sample(AIRPORTS, 2)
        routes.add(tuple(sorted((a, b))))
    numbers = rng.sample(range(1000), 2 * 2 * len(routes) * len(FLIGHT_DATES))
    flights = {}
    for a, b in sorted(routes):
        for origin, destination in ((a, b), (b, a)):
            for day in FLIGHT_DATES:
                for _ in range(2):
                    number = f"HAT{numbers.pop():03d}"
                    dep = rng.randrange(6 * 12, 16 * 12) * 5  # minutes after midnight, 06:00-15:55
                    arr = dep + rng.randrange(12, 72) * 5  # 1 to 6 hours
                    status = rng.choices(FLIGHT_STATUSES, weights=(80, 15, 5))[0]
                    flights[number] = {
                        "flight_number": number,
                        "origin": origin,
                        "destination": destination,
                        "date": day,
                        "departure_time": f"{dep // 60:02d}:{dep % 60:02d}",
                        "arrival_time": f"{arr // 60:02d}:{arr % 60:02d}",
                        "status": status,
                        "available_seats": {c: rng.randrange(0 if c == "business" else 2, 20) for c in CABINS},
                        "prices": {c: rng.randrange(*_PRICE_RANGES[c]) for c in CABINS},
                    }
    return flights


def _make_user(rng: random.Random, taken_ids: set[str], taken_payments: set[str]) -> dict:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    while True:
        user_id = f"{first.lower()}_{last.lower()}_{rng.randrange(1000, 10000)}"
        if user_id not in taken_ids:
            taken_ids.add(user_id)
            break
    methods = {}
    for _ in range(rng.randint(1, 2)):
        brand = rng.choice(sorted(_CARD_PREFIXES))
        methods[_payment_id(rng, "credit_card", taken_payments)] = {
            "source": "credit_card",
            "brand": brand,
            "card_number": _card_number(rng, brand),
            "expiry": f"{rng.randint(1, 12):02d}/{rng.randint(27, 32)}",
        }
    if rng.random() < 0.7:
        methods[_payment_id(rng, "gift_card", taken_payments)] = {
            "source": "gift_card",
            "balance": rng.randrange(20, 600),
        }
    if rng.random() < 0.4:
        methods[_payment_id(rng, "certificate", taken_payments)] = {
            "source": "certificate",
            "amount": rng.choice((100, 150, 250, 500)),
        }
    return {
        "user_id": user_id,
        "name": {"first_name": first, "last_name": last},
        "email": f"{first.lower()}.{last.lower()}{rng.randrange(10, 100)}@{rng.choice(_EMAIL_DOMAINS)}",
        "phone": f"+1-{rng.choice(_AREA_CODES)}-555-{rng.randrange(100, 10000):04d}",
        "dob": f"{rng.randint(1950, 2004)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "membership": rng.choices(("regular", "silver", "gold"), weights=(6, 3, 1))[0],
        "payment_methods": methods,
        "reservations": [],
    }


def _flight_leg(flight: dict, cabin: str) -> dict:
    return {k: flight[k] for k in ("flight_number", "origin", "destination", "date")} | {
        "price": flight["prices"][cabin]
    }


def _make_reservation(rng: random.Random, user: dict, flights: dict, by_route: dict, code: str) -> dict:
    outbound = flights[rng.choice(sorted(flights))]
    legs = [outbound]
    if rng.random() < 0.3:  # round trip: a later flight back on the reverse route
        back = [f for f in by_route[(outbound["destination"], outbound["origin"])] if f["date"] > outbound["date"]]
        if back:
            legs.append(rng.choice(back))
    cabin = rng.choices(CABINS, weights=(4, 4, 2))[0]
    passengers = [{**user["name"], "dob": user["dob"]}]
    if rng.random() < 0.25:
        passengers.append(
            {"first_name": rng.choice(_FIRST_NAMES), "last_name": user["name"]["last_name"], "dob": "1990-01-01"}
        )
    insurance = rng.random() < 0.3
    total = sum(leg["prices"][cabin] for leg in legs) * len(passengers) + insurance * INSURANCE_PRICE * len(passengers)
    payable = [pid for pid, m in user["payment_methods"].items() if m["source"] == "credit_card"]
    hours_ago = rng.choice((1, 3, 6, 10, 20, 30, 48, 72, 120, 200))
    created = datetime.fromisoformat(NOW) - timedelta(hours=hours_ago, minutes=rng.randrange(60))
    return {
        "reservation_id": code,
        "user_id": user["user_id"],
        "origin": outbound["origin"],
        "destination": outbound["destination"],
        "trip_type": "round_trip" if len(legs) == 2 else "one_way",
        "flights": [_flight_leg(leg, cabin) for leg in legs],
        "cabin": cabin,
        "passengers": passengers,
        "payment_history": [{"payment_id": rng.choice(payable), "amount": total}],
        "insurance": insurance,
        "status": "active",
        "created_at": created.isoformat(timespec="seconds"),
    }


@lru_cache(maxsize=8)
def _generate(seed: int, num_users: int) -> str:
    """The database as a JSON string (cached: `json.loads` is a fast, safe deep copy)."""
    rng = random.Random(f"airline-db-{seed}")
    flights = _make_flights(rng)
    by_route: dict[tuple[str, str], list[dict]] = {}
    for f in flights.values():
        by_route.setdefault((f["origin"], f["destination"]), []).append(f)
    users, reservations = {}, {}
    taken_ids: set[str] = set()
    taken_payments: set[str] = set()
    counter = 0
    for _ in range(num_users):
        user = _make_user(rng, taken_ids, taken_payments)
        for _ in range(rng.randint(2, 4)):
            code = reservation_code(seed, counter, reservations)
            counter += 1
            reservations[code] = _make_reservation(rng, user, flights, by_route, code)
            user["reservations"].append(code)
        users[user["user_id"]] = user
    meta = {"seed": seed, "now": NOW, "next_reservation": counter}
    return json.dumps({"meta": meta, "users": users, "flights": flights, "reservations": reservations})


def build_database(seed: int = 0, *, num_users: int = 64) -> dict:
    """A fresh, mutable copy of the synthetic airline database for `seed`.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seed of the generator; the same seed always gives the same database.
        num_users (`int`, *optional*, defaults to `64`):
            Number of users, each with 2-4 reservations.

    Returns:
        `dict`: The database (see the module docstring for its layout).
    """
    return json.loads(_generate(seed, num_users))


def hours_since(timestamp: str, now: str = NOW) -> float:
    """Hours between an ISO timestamp and `now`."""
    return (datetime.fromisoformat(now) - datetime.fromisoformat(timestamp)).total_seconds() / 3600
