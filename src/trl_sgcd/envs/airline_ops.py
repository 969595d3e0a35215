"""The airline tools as pure functions on the database: look-ups, and state changes that enforce the written policy.

Every function takes the database (see `airline_db`) and plain arguments, mutates the database only when the action is
allowed, and raises `ToolError` with a short, model-readable message otherwise (the environment turns that into an
error observation). The policy text that the model reads is `AIRLINE_POLICY` in `airline_tasks`; the rules are here.
"""

from __future__ import annotations

from .airline_db import CABINS, INSURANCE_PRICE, NOW, hours_since, reservation_code


class ToolError(Exception):
    """A tool call that cannot be carried out (unknown id, bad value, policy violation)."""


def get_user(db: dict, user_id: str) -> dict:
    if user_id not in db["users"]:
        raise ToolError(f"user '{user_id}' not found")
    return db["users"][user_id]


def get_reservation(db: dict, reservation_id: str) -> dict:
    if reservation_id not in db["reservations"]:
        raise ToolError(f"reservation '{reservation_id}' not found")
    return db["reservations"][reservation_id]


def get_flight(db: dict, flight_number: str) -> dict:
    if flight_number not in db["flights"]:
        raise ToolError(f"flight '{flight_number}' not found")
    return db["flights"][flight_number]


def search_direct(db: dict, origin: str, destination: str, date: str) -> list[dict]:
    """Direct flights on a route and date, sorted by departure time (cancelled flights included, with their status)."""
    found = [
        f
        for f in db["flights"].values()
        if f["origin"] == origin.upper() and f["destination"] == destination.upper() and f["date"] == date
    ]
    return sorted(found, key=lambda f: f["departure_time"])


def cancellation_allowed(reservation: dict, now: str = NOW) -> tuple[bool, str]:
    """Policy: cancel only within 24 h of booking, or with travel insurance, or in business cabin."""
    if reservation["status"] != "active":
        return False, "the reservation is already cancelled"
    if hours_since(reservation["created_at"], now) <= 24:
        return True, "booked within the last 24 hours"
    if reservation["insurance"]:
        return True, "the reservation has travel insurance"
    if reservation["cabin"] == "business":
        return True, "business cabin"
    return False, "booked more than 24 hours ago, without travel insurance, not in business cabin"


def _check_cabin(cabin: str) -> None:
    if cabin not in CABINS:
        raise ToolError(f"unknown cabin '{cabin}', expected one of {', '.join(CABINS)}")


def _bookable(db: dict, flight_number: str, cabin: str, seats: int) -> dict:
    flight = get_flight(db, flight_number)
    if flight["status"] == "cancelled":
        raise ToolError(f"flight {flight_number} is cancelled and cannot be booked")
    if flight["available_seats"][cabin] < seats:
        raise ToolError(f"flight {flight_number} has no {cabin} seats left")
    return flight


def _charge(user: dict, payment_id: str, amount: int, *, allow_certificate: bool = True) -> None:
    method = user["payment_methods"].get(payment_id)
    if method is None:
        raise ToolError(f"payment method '{payment_id}' not found for user {user['user_id']}")
    if method["source"] == "gift_card" and method["balance"] < amount:
        raise ToolError(f"gift card {payment_id} balance ${method['balance']} is less than ${amount}")
    if method["source"] == "certificate":
        if not allow_certificate:
            raise ToolError("certificates can only be used for new bookings")
        if method["amount"] < amount:
            raise ToolError(f"certificate {payment_id} covers ${method['amount']}, less than ${amount}")
    # All checks passed: apply. A certificate is used up whole.
    if method["source"] == "gift_card":
        method["balance"] -= amount
    elif method["source"] == "certificate":
        del user["payment_methods"][payment_id]


def _refund(user: dict, payment_id: str, amount: int) -> None:
    """Refund to the original method: gift cards get the balance back, cards are credited, certificates are not."""
    method = user["payment_methods"].get(payment_id)
    if method is not None and method["source"] == "gift_card":
        method["balance"] += amount


def _leg(flight: dict, cabin: str) -> dict:
    keys = ("flight_number", "origin", "destination", "date")
    return {k: flight[k] for k in keys} | {"price": flight["prices"][cabin]}


def book(db: dict, user_id: str, flight_numbers: list[str], cabin: str, payment_id: str, insurance: bool) -> dict:
    """Book one passenger (the user) on 1-2 connecting flights; returns the new reservation."""
    user = get_user(db, user_id)
    _check_cabin(cabin)
    if not 1 <= len(flight_numbers) <= 2:
        raise ToolError("give one or two flight numbers")
    flights = [_bookable(db, number, cabin, 1) for number in flight_numbers]
    if len(flights) == 2 and flights[0]["destination"] != flights[1]["origin"]:
        raise ToolError("the second flight must depart from the first flight's destination")
    total = sum(f["prices"][cabin] for f in flights) + (INSURANCE_PRICE if insurance else 0)
    _charge(user, payment_id, total)
    for f in flights:
        f["available_seats"][cabin] -= 1
    code = reservation_code(db["meta"]["seed"], db["meta"]["next_reservation"], db["reservations"])
    db["meta"]["next_reservation"] += 1
    round_trip = len(flights) == 2 and flights[1]["destination"] == flights[0]["origin"]
    reservation = {
        "reservation_id": code,
        "user_id": user_id,
        "origin": flights[0]["origin"],
        "destination": flights[0]["destination"] if round_trip else flights[-1]["destination"],
        "trip_type": "round_trip" if round_trip else "one_way",
        "flights": [_leg(f, cabin) for f in flights],
        "cabin": cabin,
        "passengers": [{**user["name"], "dob": user["dob"]}],
        "payment_history": [{"payment_id": payment_id, "amount": total}],
        "insurance": bool(insurance),
        "status": "active",
        "created_at": db["meta"]["now"],
    }
    db["reservations"][code] = reservation
    user["reservations"].append(code)
    return reservation


def cancel(db: dict, reservation_id: str, *, enforce_policy: bool = True) -> dict:
    """Cancel a reservation; refunds every payment and frees the seats. With `enforce_policy` (the full profile) only
    if the policy allows it; without (the compact profile, as in τ²) the agent must apply the policy itself, and only
    an already cancelled reservation is refused."""
    reservation = get_reservation(db, reservation_id)
    allowed, reason = cancellation_allowed(reservation, db["meta"]["now"])
    if reservation["status"] != "active" or (enforce_policy and not allowed):
        raise ToolError(f"cancellation not allowed by policy: {reason}")
    user = db["users"][reservation["user_id"]]
    seats = len(reservation["passengers"])
    for leg in reservation["flights"]:
        db["flights"][leg["flight_number"]]["available_seats"][reservation["cabin"]] += seats
    for payment in list(reservation["payment_history"]):
        _refund(user, payment["payment_id"], payment["amount"])
        reservation["payment_history"].append({"payment_id": payment["payment_id"], "amount": -payment["amount"]})
    reservation["status"] = "cancelled"
    return reservation


def _new_legs(db: dict, reservation: dict, flight_numbers: list[str]) -> list[dict]:
    old = reservation["flights"]
    if len(flight_numbers) != len(old):
        raise ToolError(f"give {len(old)} flight number(s), one per leg of the reservation")
    if list(flight_numbers) == [leg["flight_number"] for leg in old]:
        raise ToolError("the new flights are the same as the current ones")
    seats = len(reservation["passengers"])
    current = {leg["flight_number"]: leg for leg in old}
    legs = []
    for number, leg in zip(flight_numbers, old):
        flight = get_flight(db, number) if number in current else _bookable(db, number, reservation["cabin"], seats)
        if (flight["origin"], flight["destination"]) != (leg["origin"], leg["destination"]):
            raise ToolError(
                f"flight {number} must fly {leg['origin']} to {leg['destination']} like the leg it replaces"
            )
        legs.append(dict(current[number]) if number in current else _leg(flight, reservation["cabin"]))
    return legs


def change_flights(db: dict, reservation_id: str, flight_numbers: list[str], payment_id: str) -> dict:
    """Move a reservation to other flights on the same route(s); the fare difference goes to `payment_id`."""
    reservation = get_reservation(db, reservation_id)
    if reservation["status"] != "active":
        raise ToolError("the reservation is cancelled")
    if reservation["cabin"] == "basic_economy":
        raise ToolError("change not allowed by policy: basic economy reservations cannot be changed")
    legs = _new_legs(db, reservation, flight_numbers)
    user = db["users"][reservation["user_id"]]
    method = user["payment_methods"].get(payment_id)
    if method is None:
        raise ToolError(f"payment method '{payment_id}' not found for user {user['user_id']}")
    seats = len(reservation["passengers"])
    diff = (sum(leg["price"] for leg in legs) - sum(leg["price"] for leg in reservation["flights"])) * seats
    if diff > 0:
        _charge(user, payment_id, diff, allow_certificate=False)
    elif diff < 0:
        if method["source"] == "certificate":
            raise ToolError("refunds cannot go to a certificate")
        _refund(user, payment_id, -diff)
    cabin = reservation["cabin"]
    for leg in reservation["flights"]:
        db["flights"][leg["flight_number"]]["available_seats"][cabin] += seats
    for leg in legs:
        db["flights"][leg["flight_number"]]["available_seats"][cabin] -= seats
    reservation["flights"] = legs
    if diff:
        reservation["payment_history"].append({"payment_id": payment_id, "amount": diff})
    return reservation
