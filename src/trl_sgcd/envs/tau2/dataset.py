"""τ² tasks as a `datasets.Dataset` for `GRPOTrainer`, and the single-instruction user message (user mode "single").

Single-instruction mode runs without a user simulator: the conversation's first (and only) user message is what the
simulated user would open with, rendered from the scenario's `reason_for_call` and `known_info` in the first person.
It never shows the simulator's hidden instructions: `task_instructions` and `unknown_info` are not used at all, and
sentences of `reason_for_call` that direct the simulator rather than state the user's request (anything about "the
agent", conditions, what to mention, reveal, insist on or test, style instructions) are dropped. A fixed line grants
the confirmation τ²'s policies require before a write, since no one is there to say "yes".

Private values (`private_values` column, for `credit_private_columns`): the task user's e-mail, date of birth,
address (street, unit, city, "city, state", zip), payment method ids, card last-four digits, gift card and certificate
ids, the shipping address of every order of the user (retail), the dates of birth of saved, travelling and newly booked
passengers, and new addresses in the gold actions, plus τ²'s `communicate_info` answer literals. The credit sanitizer masks them before any
evidence reaches a reference LLM. Flight numbers, reservation and order ids, user ids and dates stay readable.
"""

from __future__ import annotations

import json
import re

from .domain import load_domain

PRIVATE_COLUMNS = ["private_values"]
USER_MODES = ("single", "simulator")
SIMULATOR_NOTE = (
    "\n\nTo send a message to the customer, call the tool send_message_to_user; its result is the customer's reply."
)
CONFIRMATION = "I confirm: you may go ahead with any change we need, as long as the policy allows it."

# Sentences of reason_for_call that instruct the simulator (how to behave) rather than state the request.
_META = re.compile(
    r"(?i)\b(?:the agent|agent (?:to|asks|says|can|cannot|tells)|make the agent|if|when|unless|mention|reveal|"
    r"confirm\w*|insist\w*|persistent\w*|abrupt\w*|halfway|suddenly|make up|pretend|in this order|at once|"
    r"at the same time|accept|offer|test\w*|insert\w*|communicate|not allowed|familiar|confuse|regret|"
    r"change your mind|rethink|make sure|do not want to|don't want to|be sure|otherwise|human agent)\b"
)
_SENTENCE = re.compile(r"(?<=[.!?])(?<!i\.e\.)(?<!e\.g\.)\s+|\n+")
_VERB_AFTER_YOU = (
    r"need|want|have|had|can|could|will|would|should|do|did|don't|didn't|think|know|get|go|make|take|booked|book|"
    r"prefer|wish|live|just|also|still|only|currently|recently|may|might|must|received|bought|ordered|decided|"
    r"spoke|contact|realize|wonder|plan|hope|like|paid|used|cannot|can't"
)
_FIRST_PERSON = (  # ordered: longer phrases first
    (r"\byou are\b", "I am"),
    (r"\byou're\b", "I'm"),
    (r"\byou've\b", "I've"),
    (r"\byou'd\b", "I'd"),
    (r"\byou'll\b", "I'll"),
    (r"\byou were\b", "I was"),
    (r"\byourself\b", "myself"),
    (r"\byours\b", "mine"),
    (r"\byour\b", "my"),
    (r"(^|[,;:(]\s*|\b(?:that|because|but|and|so|or|as|since|until|where|which|than|now)\s+)you\b", r"\1I"),
    (r"\byou(?=\s+(?:" + _VERB_AFTER_YOU + r")\b)", "I"),
    (r"\byou\b", "me"),
)


def _first_person(sentence: str) -> str:
    text = sentence.strip()
    text = re.sub(r"(?i)^first,\s*", "", text)
    text = re.sub(r"(?i)^try to\b", "I want to", text)
    for pattern, replacement in _FIRST_PERSON:
        if "\\1" in replacement:
            text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
        else:
            text = re.sub(pattern, lambda m, r=replacement: _case(m.group(0), r), text, flags=re.IGNORECASE)
    text = re.sub(r"\bI (?:is|are)\b", "I am", text)
    return text[:1].upper() + text[1:]


def _case(found: str, replacement: str) -> str:
    return replacement if replacement.startswith("I") or not found[:1].isupper() else replacement.capitalize()


def _request_sentences(text: str | None) -> list[str]:
    text = re.sub(r"\([^)]*\)", lambda m: "" if _META.search(m.group(0)) else m.group(0), text or "")
    text = re.sub(r"\n\s*-\s*", ", ", re.sub(r":\s*\n\s*-\s*", ": ", text))  # a bulleted list stays one sentence
    text = re.sub(r"\s+([.,])", r"\1", text)
    return [s.strip() for s in _SENTENCE.split(text) if s.strip() and not _META.search(s)]


def first_user_message(task, *, confirm: bool = True) -> str:
    """
    The single-instruction user message of a τ² task (see the module docstring).

    Args:
        task (τ² `Task`): The task.
        confirm (`bool`, *optional*, defaults to `True`): Append the standing confirmation line.
    """
    instructions = task.user_scenario.instructions
    if isinstance(instructions, str):  # unstructured scenario: nothing can be separated safely
        reason, known = "", ""
    else:
        reason, known = instructions.reason_for_call, instructions.known_info
    sentences = [_first_person(s) for s in _request_sentences(reason) + _request_sentences(known)]
    if not _request_sentences(reason):
        sentences.insert(0, "I need help with a request.")
    if confirm:
        sentences.append(CONFIRMATION)
    return " ".join(s if s.endswith((".", "!", "?")) else s + "." for s in sentences)


def user_ids(domain, task) -> list[str]:
    """User ids a task is about: named in `known_info`, in gold-action arguments, or matched by e-mail / name+zip."""
    instructions = task.user_scenario.instructions
    known = "" if isinstance(instructions, str) else f"{instructions.known_info or ''} {instructions.reason_for_call}"
    users = domain.initial_db.users
    found = [u for u in re.findall(r"[a-z]+_[a-z]+_\d{4}", known) if u in users]
    found += [a["arguments"]["user_id"] for a in domain.gold_actions(task.id) if "user_id" in a["arguments"]]
    emails = set(re.findall(r"[\w.+-]+@[\w-]+\.\w+", known))
    for user_id, user in users.items():
        dump = user.model_dump()
        name = dump.get("name", {})
        full = f"{name.get('first_name', '')} {name.get('last_name', '')}".strip()
        zip_code = str(dump.get("address", {}).get("zip", ""))
        if dump.get("email") in emails or (full and full in known and zip_code and zip_code in known):
            found.append(user_id)
    return list(dict.fromkeys(u for u in found if u in users))


def _values(dump: dict, keys: tuple[str, ...]) -> list[str]:
    out = []
    for key, value in dump.items():
        if isinstance(value, dict):
            out += _values(value, keys)
        elif isinstance(value, list):
            out += [v for item in value if isinstance(item, dict) for v in _values(item, keys)]
        elif key in keys and value not in (None, ""):
            out.append(str(value))
    return out


_PRIVATE_KEYS = ("email", "dob", "address1", "address2", "city", "zip", "id", "payment_id", "last_four")
_ADDRESS_KEYS = ("address1", "address2", "city", "zip")


def _places(value) -> list[str]:
    """Every address of a (nested) record as "City, ST" and "City ST" (a two-letter state alone is too short to mask)."""
    if isinstance(value, list):
        return [p for item in value for p in _places(item)]
    if not isinstance(value, dict):
        return []
    out = [p for v in value.values() for p in _places(v)]
    city, state = value.get("city"), value.get("state")
    if city and state:
        out += [f"{city}, {state}", f"{city} {state}"] + ([state] if len(state) > 2 else [])
    return out


def private_values(domain, task) -> list[str]:
    """The task user's private profile values and τ²'s answer literals (see the module docstring)."""
    db = domain.initial_db
    values = []
    for user_id in user_ids(domain, task):
        user = db.users[user_id].model_dump()
        profile = {k: v for k, v in user.items() if k not in ("reservations", "orders")}
        values += _values(profile, _PRIVATE_KEYS) + _places(profile)
        records = getattr(db, "reservations", None) or getattr(db, "orders", None) or {}
        for record_id in user.get("reservations", user.get("orders", [])):
            if record_id in records:
                record = records[record_id].model_dump()
                shipping = record.get("address") or {}  # a retail order's shipping address
                values += _values(
                    {"p": record.get("passengers", []), "h": record.get("payment_history", []), "a": shipping},
                    _PRIVATE_KEYS,
                )
                values += _places(shipping)
    arguments = [a["arguments"] for a in domain.gold_actions(task.id)]
    values += _values({"a": arguments}, ("dob", *_ADDRESS_KEYS)) + _places(arguments)  # new passengers, new addresses
    criteria = task.evaluation_criteria
    values += list((criteria.communicate_info if criteria is not None else None) or [])
    return sorted(set(values))


def tau2_rows(
    domain_name: str, split: str = "train", *, n: int | None = None, confirm: bool = True, user_mode: str = "single"
) -> list[dict]:
    """The rows of [`make_tau2_dataset`] as plain dicts."""
    if user_mode not in USER_MODES:
        raise ValueError(f"user_mode={user_mode!r} is not supported; choose one of {list(USER_MODES)}.")
    domain = load_domain(domain_name)
    simulated = user_mode == "simulator"
    system = domain.system_prompt + (SIMULATOR_NOTE if simulated else "")
    rows = []
    for task_id in domain.split_ids(split)[:n]:
        task = domain.task(task_id)
        user = "" if simulated else first_user_message(task, confirm=confirm)  # the simulator's opening comes at reset
        rows.append(
            {
                "prompt": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                "task_id": task_id,
                "category": domain.category(task_id),
                "domain": domain_name,
                "split": split,
                "gold_actions": json.dumps(domain.gold_actions(task_id)),
                "private_values": json.dumps(private_values(domain, task)),
            }
        )
    return rows


def make_tau2_dataset(
    domain_name: str, split: str = "train", *, n: int | None = None, confirm: bool = True, user_mode: str = "single"
):
    """
    τ² tasks of a split as a `datasets.Dataset` (use with `environment_factory=Tau2AirlineEnv`, `tau2_reward`).

    Args:
        domain_name (`str`): `"airline"` or `"retail"`.
        split (`str`, *optional*, defaults to `"train"`): τ²'s split: `"train"`, `"test"` or `"base"` (all tasks).
        n (`int`, *optional*): Keep only the first `n` tasks of the split.
        confirm (`bool`, *optional*, defaults to `True`): Append the standing confirmation to the user message.
        user_mode (`str`, *optional*, defaults to `"single"`): `"single"` (the single-instruction user message) or
            `"simulator"` (empty user message, filled by the simulated user's opening at `reset`; train with
            `Tau2AirlineUserSimEnv`).

    Returns:
        `datasets.Dataset`: Columns `prompt` (τ²'s agent system prompt + the single-instruction user message),
        `task_id`, `category` (action / information / transfer / no_action), `domain`, `split`, `gold_actions` (JSON,
        used by the scripted expert; never rendered into a prompt) and `private_values` (JSON list, see
        `PRIVATE_COLUMNS`).
    """
    from datasets import Dataset

    return Dataset.from_list(tau2_rows(domain_name, split, n=n, confirm=confirm, user_mode=user_mode))
