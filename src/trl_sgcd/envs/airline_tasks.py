"""Procedural task sets of the mini airline environment: a train split and a held-out test split per seed.

Each task is a complete single-turn customer request (no user simulator) that names the user id and whatever else the
agent needs, with a gold solution of 1-3 tool calls. Categories follow the paper's tau3-airline audit (Appendix B):

* `action`: the request needs a state change (book, cancel, change flights);
* `information`: the answer needs facts that only tool look-ups reveal; the final answer must contain them;
* `transfer`: the request is outside the agent's scope (compensation, baggage, pets, assistance): transfer to a human;
* `no_action`: the request violates the policy; the right behaviour leaves the database unchanged and refuses.

Train and test tasks come from disjoint users (hence disjoint reservations); the test mix mirrors the paper's 20-task
split (13 action, 4 information, 1 transfer, 2 no-action).
"""

from __future__ import annotations

import copy
import random
from functools import lru_cache

from .airline_db import build_database
from .airline_ops import cancellation_allowed, search_direct

AIRLINE_POLICY = """You are a Hat Airlines customer-service agent. Now: 2026-05-05 12:00.
Use the tools to look up users, reservations and flights and to make changes. Do only what the user asks.
Policy:
- Booking: one passenger (the user), paid with one of the user's payment methods; a gift card or certificate must \
cover the price. Insurance costs $30.
- Cancellation: only if booked within the last 24 hours, or insured, or in business cabin.
- Flight changes: not for basic_economy; same route only; the fare difference goes to the payment method the user names.
- Compensation, baggage, pets, assistance and anything else the tools cannot do: transfer_to_human_agents.
- If a request breaks the policy, do not act: explain why and refuse.
- Answer only with facts from tool results. When done, reply in plain text."""

COMPACT_POLICY = """Hat Airlines agent. Now: 2026-05-05 12:00. First look up the reservation.
- Cancel only if booked within 24 hours, insured, or in business cabin; otherwise refuse and say why.
- Compensation, baggage, pets, assistance: transfer_to_human_agents.
- Answer only from tool results."""

CATEGORIES = ("action", "information", "transfer", "no_action")
SPLIT_MIX = {
    "train": {"action": 60, "information": 20, "transfer": 8, "no_action": 8},
    "test": {"action": 13, "information": 4, "transfer": 1, "no_action": 2},
}
KINDS = {
    "action": ("cancel", "book", "change", "book_search", "book_gift_card"),
    "information": ("gift_card_balance", "flight_status", "cheapest_fare", "reservation_total"),
    "transfer": ("compensation", "out_of_scope"),
    "no_action": ("cancel_refused", "change_refused"),
}
COMPACT_SPLIT_MIX = {
    "train": {"action": 24, "information": 12, "transfer": 12, "no_action": 16},
    "test": {"action": 8, "information": 4, "transfer": 4, "no_action": 4},
}
COMPACT_KINDS = {
    "action": ("cancel",),
    "information": ("reservation_total",),
    "transfer": ("compensation", "out_of_scope"),
    "no_action": ("cancel_refused",),
}
PROFILES = ("full", "compact")
"""Task profiles: `full` (the default: 13 kinds over 7 tools) and `compact` (the kinds that need only the reservation
look-up, cancel and transfer tools, for experiments on CPU; `trl_sgcd.envs.airline_compact`)."""
_TEST_USER_SHARE = 0.25
_REASONS = ("my plans changed", "I can no longer travel", "I booked the wrong trip", "my meeting was moved")
_OUT_OF_SCOPE = (
    "my checked bag from reservation {rid} never arrived and I need it traced",
    "I want to bring my dog in the cabin on reservation {rid}",
    "I need wheelchair assistance at the airport for reservation {rid}",
)


def _call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def _hello(user: dict) -> str:
    return f"Hi, I'm {user['name']['first_name']} {user['name']['last_name']}, user id {user['user_id']}."


def _reservations(db: dict, user: dict, predicate) -> list[dict]:
    found = [db["reservations"][rid] for rid in user["reservations"]]
    return [r for r in found if r["status"] == "active" and predicate(r)]


def _methods(user: dict, source: str) -> list[str]:
    return sorted(pid for pid, m in user["payment_methods"].items() if m["source"] == source)


def _bookable(flight: dict, cabin: str, seats: int = 1) -> bool:
    return flight["status"] != "cancelled" and flight["available_seats"][cabin] >= seats


def _cheapest(db: dict, origin: str, destination: str, date: str, cabin: str) -> dict | None:
    """The unique cheapest bookable direct flight, or None when there is none or a tie."""
    options = sorted(
        (f for f in search_direct(db, origin, destination, date) if _bookable(f, cabin)),
        key=lambda f: f["prices"][cabin],
    )
    if not options or (len(options) > 1 and options[0]["prices"][cabin] == options[1]["prices"][cabin]):
        return None
    return options[0]


def _random_flight(rng: random.Random, db: dict, cabin: str) -> dict | None:
    flight = db["flights"][rng.choice(sorted(db["flights"]))]
    return flight if _bookable(flight, cabin) else None


def _alternative(rng: random.Random, db: dict, reservation: dict) -> dict | None:
    leg = reservation["flights"][0]
    options = [
        f
        for d in sorted({f["date"] for f in db["flights"].values()})
        for f in search_direct(db, leg["origin"], leg["destination"], d)
        if f["flight_number"] != leg["flight_number"]
        and _bookable(f, reservation["cabin"], len(reservation["passengers"]))
    ]
    return rng.choice(options) if options else None


# --- one generator per task kind: (rng, db, user) -> task fields, or None when the user does not fit -------------


def _cancel(rng, db, user):
    options = _reservations(db, user, lambda r: cancellation_allowed(r, db["meta"]["now"])[0])
    if not options:
        return None
    rid = rng.choice(options)["reservation_id"]
    return {
        "key": rid,
        "instruction": f"{_hello(user)} Please cancel my reservation {rid}, {rng.choice(_REASONS)}.",
        "gold_actions": [
            _call("get_reservation_details", reservation_id=rid),
            _call("cancel_reservation", reservation_id=rid),
        ],
        "expert_answer": f"Your reservation {rid} is cancelled. The refund goes to the original payment method.",
    }


def _book(rng, db, user, *, search=False, gift_card=False):
    cabin = rng.choice(("basic_economy", "economy") if gift_card else ("basic_economy", "economy", "business"))
    flight = _random_flight(rng, db, cabin)
    if flight is None:
        return None
    o, d, date = flight["origin"], flight["destination"], flight["date"]
    if search and _cheapest(db, o, d, date, cabin) is not flight:
        return None
    cards, gift_cards = _methods(user, "credit_card"), _methods(user, "gift_card")
    if gift_card:
        if len(gift_cards) != 1 or user["payment_methods"][gift_cards[0]]["balance"] < flight["prices"][cabin]:
            return None
        pid, pay = gift_cards[0], "my gift card"
    else:
        pid = rng.choice(cards)
        pay = pid
    insurance = not gift_card and rng.random() < 0.3
    what = f"the cheapest {cabin} direct flight" if search else f"flight {flight['flight_number']}"
    extra = " Please add travel insurance." if insurance else ""
    booking = _call(
        "book_reservation",
        user_id=user["user_id"],
        flight_numbers=[flight["flight_number"]],
        cabin=cabin,
        payment_id=pid,
    )
    if insurance:
        booking["arguments"]["insurance"] = True
    lookup = []
    if search:
        lookup = [_call("search_direct_flight", origin=o, destination=d, date=date)]
    elif gift_card:
        lookup = [_call("get_user_details", user_id=user["user_id"])]
    return {
        "key": (flight["flight_number"], cabin),
        "instruction": f"{_hello(user)} Please book {what} from {o} to {d} on {date}"
        + ("" if search else f" in {cabin}")
        + f" for me, paid with {pay}.{extra}",
        "gold_actions": lookup + [booking],
        "expert_answer": f"You are booked on flight {flight['flight_number']} from {o} to {d} on {date} in {cabin}, "
        f"paid with {pid}.",
    }


def _change(rng, db, user):
    options = _reservations(db, user, lambda r: r["trip_type"] == "one_way" and r["cabin"] != "basic_economy")
    cards = _methods(user, "credit_card")
    if not options:
        return None
    reservation = rng.choice(options)
    new = _alternative(rng, db, reservation)
    if new is None:
        return None
    rid, fn, pid = reservation["reservation_id"], new["flight_number"], rng.choice(cards)
    return {
        "key": rid,
        "instruction": f"{_hello(user)} Please change my reservation {rid} to flight {fn} on {new['date']}. "
        f"Charge or refund any fare difference to {pid}.",
        "gold_actions": [
            _call("get_reservation_details", reservation_id=rid),
            _call("update_reservation_flights", reservation_id=rid, flight_numbers=[fn], payment_id=pid),
        ],
        "expert_answer": f"Your reservation {rid} is now on flight {fn} on {new['date']}; "
        f"the fare difference went to {pid}.",
    }


def _gift_card_balance(rng, db, user):
    gift_cards = _methods(user, "gift_card")
    if not gift_cards:
        return None
    gid = rng.choice(gift_cards)
    balance = user["payment_methods"][gid]["balance"]
    return {
        "key": gid,
        "instruction": f"{_hello(user)} How much money is left on my gift card {gid}?",
        "gold_actions": [_call("get_user_details", user_id=user["user_id"])],
        "answer_facts": [str(balance)],
        "expert_answer": f"Your gift card {gid} has a balance of ${balance}.",
    }


def _flight_status(rng, db, user):
    options = _reservations(db, user, lambda r: r["trip_type"] == "one_way")
    if not options:
        return None
    reservation = rng.choice(options)
    leg = reservation["flights"][0]
    status = db["flights"][leg["flight_number"]]["status"]
    rid = reservation["reservation_id"]
    return {
        "key": rid,
        "instruction": f"{_hello(user)} What is the current status of the flight in my reservation {rid}?",
        "gold_actions": [
            _call("get_reservation_details", reservation_id=rid),
            _call("search_direct_flight", origin=leg["origin"], destination=leg["destination"], date=leg["date"]),
        ],
        "answer_facts": [status],
        "expert_answer": f"Your flight {leg['flight_number']} on {leg['date']} is {status}.",
    }


def _cheapest_fare(rng, db, user):
    cabin = rng.choice(("basic_economy", "economy", "business"))
    flight = _random_flight(rng, db, cabin)
    if flight is None:
        return None
    o, d, date = flight["origin"], flight["destination"], flight["date"]
    best = _cheapest(db, o, d, date, cabin)
    if best is None or not all(_bookable(f, cabin) for f in search_direct(db, o, d, date)):
        return None  # a unique cheapest fare among flights that can all be booked: no reading of "cheapest" is wrong
    price = best["prices"][cabin]
    return {
        "key": (o, d, date, cabin),
        "instruction": f"{_hello(user)} What is the cheapest {cabin} fare for a direct flight from {o} to {d} on "
        f"{date}, and which flight is it? Please do not book anything.",
        "gold_actions": [_call("search_direct_flight", origin=o, destination=d, date=date)],
        "answer_facts": [best["flight_number"], str(price)],
        "expert_answer": f"The cheapest {cabin} fare from {o} to {d} on {date} is ${price}, on flight "
        f"{best['flight_number']}.",
    }


def _reservation_total(rng, db, user):
    options = _reservations(db, user, lambda r: True)
    if not options:
        return None
    reservation = rng.choice(options)
    rid, total = reservation["reservation_id"], sum(p["amount"] for p in reservation["payment_history"])
    return {
        "key": rid,
        "instruction": f"{_hello(user)} How much did I pay in total for reservation {rid}?",
        "gold_actions": [_call("get_reservation_details", reservation_id=rid)],
        "answer_facts": [str(total)],
        "expert_answer": f"You paid ${total} in total for reservation {rid}.",
    }


def _transfer(rng, db, user, *, compensation: bool):
    options = _reservations(db, user, lambda r: True)
    if not options:
        return None
    rid = rng.choice(options)["reservation_id"]
    uid = user["user_id"]
    if compensation:
        ask, summary = f"My flight in reservation {rid} was delayed and I want compensation.", "compensation"
    else:
        ask, summary = rng.choice(_OUT_OF_SCOPE).format(rid=rid).capitalize() + ".", "a request outside my tools"
    lookup = [_call("get_reservation_details", reservation_id=rid)] if compensation else []
    return {
        "key": rid,
        "instruction": f"{_hello(user)} {ask}",
        "gold_actions": lookup
        + [_call("transfer_to_human_agents", summary=f"User {uid} asks for {summary} about reservation {rid}.")],
        "expert_answer": "I have transferred you to a human agent, who will help you with this request.",
    }


def _cancel_refused(rng, db, user):
    options = _reservations(db, user, lambda r: not cancellation_allowed(r, db["meta"]["now"])[0])
    if not options:
        return None
    rid = rng.choice(options)["reservation_id"]
    return {
        "key": rid,
        "instruction": f"{_hello(user)} Please cancel my reservation {rid}, {rng.choice(_REASONS)}.",
        "gold_actions": [_call("get_reservation_details", reservation_id=rid)],
        "expert_answer": f"I'm sorry, but I cannot cancel reservation {rid}: it was booked more than 24 hours ago, "
        "has no travel insurance and is not in business cabin.",
    }


def _change_refused(rng, db, user):
    options = _reservations(db, user, lambda r: r["trip_type"] == "one_way" and r["cabin"] == "basic_economy")
    if not options:
        return None
    reservation = rng.choice(options)
    new = _alternative(rng, db, reservation)
    if new is None:
        return None
    rid, fn = reservation["reservation_id"], new["flight_number"]
    return {
        "key": rid,
        "instruction": f"{_hello(user)} Please change my reservation {rid} to flight {fn} on {new['date']}.",
        "gold_actions": [_call("get_reservation_details", reservation_id=rid)],
        "expert_answer": f"I'm sorry, but reservation {rid} is basic_economy, and basic economy reservations cannot "
        "be changed.",
    }


_GENERATORS = {
    "cancel": _cancel,
    "book": _book,
    "change": _change,
    "book_search": lambda rng, db, user: _book(rng, db, user, search=True),
    "book_gift_card": lambda rng, db, user: _book(rng, db, user, gift_card=True),
    "gift_card_balance": _gift_card_balance,
    "flight_status": _flight_status,
    "cheapest_fare": _cheapest_fare,
    "reservation_total": _reservation_total,
    "compensation": lambda rng, db, user: _transfer(rng, db, user, compensation=True),
    "out_of_scope": lambda rng, db, user: _transfer(rng, db, user, compensation=False),
    "cancel_refused": _cancel_refused,
    "change_refused": _change_refused,
}


def _split_users(seed: int, db: dict) -> dict[str, list[str]]:
    users = sorted(db["users"])
    random.Random(f"airline-users-{seed}").shuffle(users)
    n_test = round(len(users) * _TEST_USER_SHARE)
    return {"test": sorted(users[:n_test]), "train": sorted(users[n_test:])}


def _make_split(seed: int, db: dict, split: str, users: list[str], profile: str = "full") -> list[dict]:
    mix, kinds_of = (SPLIT_MIX, KINDS) if profile == "full" else (COMPACT_SPLIT_MIX, COMPACT_KINDS)
    rng = random.Random(f"airline-tasks-{seed}-{split}" + ("" if profile == "full" else f"-{profile}"))
    tasks, seen = [], set()
    for category, count in mix[split].items():
        kinds, made, attempts = kinds_of[category], 0, 0
        while made < count:
            attempts += 1
            if attempts > 500 * count:
                raise RuntimeError(f"could not generate {count} {category} tasks for the {split} split (seed {seed})")
            kind = kinds[made % len(kinds)]
            user = db["users"][rng.choice(users)]
            fields = _GENERATORS[kind](rng, db, user)
            if fields is None or (kind, fields["key"]) in seen:
                continue
            seen.add((kind, fields.pop("key")))
            tasks.append({"category": category, "kind": kind, "user_id": user["user_id"], "answer_facts": []} | fields)
            made += 1
    rng.shuffle(tasks)
    prefix = "airline" if profile == "full" else f"airline-{profile}"
    return [
        {"task_id": f"{prefix}-{split}-{i:03d}", "split": split, "seed": seed, "profile": profile} | t
        for i, t in enumerate(tasks)
    ]


@lru_cache(maxsize=8)
def _all_tasks(seed: int, profile: str = "full") -> dict[str, tuple[dict, ...]]:
    db = build_database(seed)
    users = _split_users(seed, db)
    return {split: tuple(_make_split(seed, db, split, users[split], profile)) for split in ("train", "test")}


def check_profile(profile: str) -> None:
    """ValueError naming the `profile` argument unless it is one of `PROFILES`."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")


def airline_tasks(split: str = "train", *, seed: int = 0, profile: str = "full") -> list[dict]:
    """The tasks of one split, in a fixed shuffled order (the first `n` of them keep a mixed category profile).

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            `"train"` or `"test"`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the database and of the task generator.
        profile (`str`, *optional*, defaults to `"full"`):
            `"full"` (96 train / 20 test tasks over 13 kinds) or `"compact"` (64 / 20 tasks over the 5 kinds that need
            only `get_reservation_details`, `cancel_reservation` and `transfer_to_human_agents`; same database, same
            user split, ids `airline-compact-...`).

    Returns:
        `list[dict]`: Tasks with `task_id`, `split`, `seed`, `profile`, `category`, `kind`, `user_id`, `instruction`,
        `gold_actions` (list of `{"name", "arguments"}`), `answer_facts` and `expert_answer`.
    """
    if split not in SPLIT_MIX:
        raise ValueError(f"split must be one of {sorted(SPLIT_MIX)}, got {split!r}")
    check_profile(profile)
    return copy.deepcopy(list(_all_tasks(seed, profile)[split]))


def task_profile(task_id: str) -> str:
    """The profile a task id belongs to (`airline-compact-train-003` -> `"compact"`)."""
    return "compact" if task_id.startswith("airline-compact-") else "full"


def get_task(task_id: str, *, seed: int = 0) -> dict:
    """The task with this id for `seed` (from either split, of the profile its id names)."""
    for tasks in _all_tasks(seed, task_profile(task_id)).values():
        for task in tasks:
            if task["task_id"] == task_id:
                return copy.deepcopy(task)
    raise KeyError(f"unknown airline task {task_id!r} for seed {seed}")
