"""The controlled tier's groups: a task's gold trajectory and a copy with ONE known decisive corruption (no model).

For each airline TRAIN task, the expert (gold) conversation succeeds; a corrupted copy changes one decision and is
replayed on a fresh `AirlineEnv`, so its observations are real and the verifier really fails it (copies that still
succeed are dropped). The corruption kinds:

* `write_argument`: one argument value of the last state-changing call (`reservation_id`, `flight_numbers`, `cabin`,
  `payment_id`) replaced by another value of the same kind from the database (another reservation of the user,
  another flight on the route, another cabin, another of the user's payment methods);
* `tool_name`: the last state-changing call made with another write tool (same arguments; it errors, the write is
  missing);
* `skipped_read`: an information task answered at once, without its look-up, with a wrong value;
* `final_answer`: an information task whose look-ups are right but whose answer states a wrong value.

Decisive tokens are known exactly: in the first assistant turn that differs from the gold one, the characters between
the two turns' common prefix and common suffix, widened to whole words (so a flight number counts whole, not just its
differing digits), and the tokens that overlap them ([`controlled_decisive_mask`]). Where that turn answers while the
gold turn calls a tool (`skipped_read`), the whole turn differs, so the decisive tokens are the turn's first token (the
choice to answer) and the wrong value (its difference from the gold final answer).
"""

from __future__ import annotations

import random

KINDS = ("write_argument", "tool_name", "skipped_read", "final_answer")
WRITES = ("book_reservation", "cancel_reservation", "update_reservation_flights")
OTHER_WRITE = {
    "cancel_reservation": "update_reservation_flights",
    "update_reservation_flights": "cancel_reservation",
    "book_reservation": "update_reservation_flights",
}
_WORD = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def play(task: dict, calls: list[tuple[str, dict]], answer: str) -> tuple[list[dict], float]:
    """Replay `calls` and `answer` on a fresh environment: `(completion messages, verified reward)`."""
    from trl_sgcd.envs.airline import AirlineEnv, score_episode

    env = AirlineEnv(task["seed"])
    env.reset(task_id=task["task_id"], seed=task["seed"])
    completion = []
    for name, arguments in calls:
        call = {"type": "function", "function": {"name": name, "arguments": dict(arguments)}}
        completion.append({"role": "assistant", "content": "", "tool_calls": [call]})
        completion.append({"role": "tool", "name": name, "content": getattr(env, name)(**arguments)})
    completion.append({"role": "assistant", "content": answer})
    return completion, score_episode(env, answer)


def _gold(task: dict) -> list[tuple[str, dict]]:
    return [(a["name"], dict(a["arguments"])) for a in task["gold_actions"]]


def _other_value(rng: random.Random, db: dict, task: dict, name: str, key: str, value):
    """Another value of the same kind as `value` for argument `key`, from the task's database (or None)."""
    user = db["users"][task["gold_actions"][-1]["arguments"].get("user_id") or _owner(db, task)]
    if key == "reservation_id":
        pool = [r for r in user["reservations"] if r != value] or [r for r in db["reservations"] if r != value]
    elif key == "flight_numbers":
        first = db["flights"][value[0]]
        same_route = [
            f
            for f, x in db["flights"].items()
            if f != value[0] and x["origin"] == first["origin"] and x["destination"] == first["destination"]
        ]
        pool = [[f] for f in (same_route or [f for f in db["flights"] if f != value[0]])]
    elif key == "cabin":
        pool = [c for c in ("basic_economy", "economy", "business") if c != value]
    elif key == "payment_id":
        pool = [p for p in user["payment_methods"] if p != value]
    else:
        return None
    return rng.choice(sorted(pool, key=str)) if pool else None


def _owner(db: dict, task: dict) -> str:
    rid = next(a["arguments"]["reservation_id"] for a in task["gold_actions"] if "reservation_id" in a["arguments"])
    return db["reservations"][rid]["user_id"]


def _wrong_fact(rng: random.Random, db: dict, fact: str) -> str:
    try:
        number = float(fact)
    except ValueError:
        if fact in db["flights"]:
            return rng.choice(sorted(f for f in db["flights"] if f != fact))
        statuses = sorted({f["status"] for f in db["flights"].values()} - {fact}) or ["unknown"]
        return rng.choice(statuses)
    decimals = len(fact.split(".")[1]) if "." in fact else 0
    return f"{number + rng.choice((37, 55, 120)):.{decimals}f}"


def corrupt(task: dict, kind: str, rng: random.Random) -> dict | None:
    """One corrupted copy of `task`'s gold trajectory, or None when `kind` does not apply or the copy still succeeds.

    Returns:
        `dict`: `kind`, `detail` (what changed), `completion` (messages) and `reward` (0.0).
    """
    from trl_sgcd.envs.airline import AirlineEnv

    env = AirlineEnv(task["seed"])
    env.reset(task_id=task["task_id"], seed=task["seed"])
    db, calls, answer = env.db, _gold(task), task["expert_answer"]
    writes = [k for k, (name, _) in enumerate(calls) if name in WRITES]
    facts = task.get("answer_facts") or []
    if kind in ("write_argument", "tool_name"):
        if not writes:
            return None
        k = writes[-1]
        name, arguments = calls[k]
        if kind == "tool_name":
            calls[k], detail = (OTHER_WRITE[name], arguments), f"{name} -> {OTHER_WRITE[name]}"
        else:
            keys = [key for key in ("flight_numbers", "reservation_id", "cabin", "payment_id") if key in arguments]
            rng.shuffle(keys)
            for key in keys:
                other = _other_value(rng, db, task, name, key, arguments[key])
                if other is not None:
                    calls[k] = (name, {**arguments, key: other})
                    detail = f"{name}.{key}: {arguments[key]} -> {other}"
                    break
            else:
                return None
    elif kind in ("skipped_read", "final_answer"):
        if writes or not facts or facts[0] not in answer:
            return None
        wrong = _wrong_fact(rng, db, facts[0])
        answer = answer.replace(facts[0], wrong)
        detail = f"answer {facts[0]} -> {wrong}"
        if kind == "skipped_read":
            calls, detail = [], f"no look-up; {detail}"
    else:
        raise ValueError(f"unknown corruption kind {kind!r}; expected one of {KINDS}")
    completion, reward = play(task, calls, answer)
    return None if reward >= 1.0 else {"kind": kind, "detail": detail, "completion": completion, "reward": reward}


def controlled_groups(n_per_kind: int, *, seed: int = 0, kinds=KINDS) -> list[dict]:
    """Up to `n_per_kind` groups per corruption kind from the airline TRAIN tasks (never the test split), in task
    order: `{"task", "kind", "detail", "gold", "bad"}` (`gold`/`bad`: completion messages; rewards 1.0 and 0.0)."""
    from trl_sgcd.envs.airline_tasks import airline_tasks
    from trl_sgcd.tooluse.expert import expert_conversation

    counts = dict.fromkeys(kinds, 0)
    groups = []
    for t, task in enumerate(airline_tasks("train", seed=seed)):
        for kind in kinds:
            if counts[kind] >= n_per_kind:
                continue
            bad = corrupt(task, kind, random.Random(f"{seed}-{t}-{kind}"))
            if bad is not None:
                counts[kind] += 1
                gold = expert_conversation(task)[2:]
                groups.append({"task": task, "kind": kind, "detail": bad["detail"], "gold": gold, "bad": bad})
        if all(c >= n_per_kind for c in counts.values()):
            break
    return groups


def _in_word(text: str, i: int) -> bool:
    """A character of a value: letters, digits, `_`, `-`, and a `.` between digits (120.5, not "delayed.")."""
    if text[i] == ".":
        return 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
    return text[i] in _WORD


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and _in_word(text, start - 1):
        start -= 1
    while end < len(text) and _in_word(text, end):
        end += 1
    return start, end


def differing_span(gold: str, bad: str) -> tuple[int, int]:
    """Characters of `bad` between its common prefix and common suffix with `gold`, widened to whole words."""
    p = 0
    while p < min(len(gold), len(bad)) and gold[p] == bad[p]:
        p += 1
    q = 0
    while q < min(len(gold), len(bad)) - p and gold[len(gold) - 1 - q] == bad[len(bad) - 1 - q]:
        q += 1
    return _widen(bad, p, max(len(bad) - q, p + 1))


def controlled_decisive_mask(tokenizer, gold_ids, gold_tool_mask, bad_ids, bad_tool_mask) -> list[bool]:
    """Decisive tokens of the corrupted completion (TRL layout): the widened differing span of its first assistant
    turn that differs from the gold completion's turn at the same position."""
    from trl_sgcd.envs.decisive import token_mask_from_spans, turn_runs

    gold_runs, bad_runs = turn_runs(gold_tool_mask), turn_runs(bad_tool_mask)
    gold_turns = ["".join(tokenizer.decode([int(t)]) for t in gold_ids[s:e]) for s, e in gold_runs]
    mask = [False] * len(bad_ids)
    for k, (s, e) in enumerate(bad_runs):
        pieces = [tokenizer.decode([int(t)]) for t in bad_ids[s:e]]
        text = "".join(pieces)
        gold = gold_turns[k] if k < len(gold_turns) else ""
        if text == gold:
            continue
        if "<tool_call>" in gold and "<tool_call>" not in text:
            # A skipped call: the turn answers where the gold one calls a tool. Decisive: the choice to answer (the
            # turn's first token) and the value it then gets wrong (its difference from the gold final answer).
            mask[s] = True
            gold = gold_turns[-1]
        for j, flag in enumerate(token_mask_from_spans(pieces, [differing_span(gold, text)])):
            mask[s + j] = mask[s + j] or flag
        return mask
    raise ValueError("the corrupted completion has no assistant turn that differs from the gold one")
