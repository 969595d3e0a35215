"""Ground-truth *decisive tokens* of an airline rollout: where the outcome was decided, known from the gold actions.

The credit-localization benchmark (`benchmarks/bench_credit.py`) asks whether SGCD's weights land on these tokens.
The verifier knows the gold actions of every task, so it can say, per rollout, which generated tokens decided it:

* **failed rollout**: the first tool call that leaves every gold-consistent path, or the final answer when no call
  does. Calls are walked in order, replayed on a fresh environment of the task's profile (`AirlineEnv`, or
  `CompactAirlineEnv`, whose cancel does not enforce the policy):
  - a *state-changing* call (a write that succeeded, or `transfer_to_human_agents`) must equal the next pending gold
    write (same name and normalised arguments; a transfer only by name: its summary is never verified). One that
    does not leaves every gold path, since writes cannot be undone. Decisive: its name when the name is wrong (or no
    write was due), else the values of the arguments that differ;
  - any other call (a look-up, or a write that failed and changed nothing) stays on a gold-consistent path unless it
    uses a value the agent could not have seen (not in the instruction, the gold arguments or an earlier
    observation of this rollout: a hallucinated id). Decisive: those argument values; an unknown tool: its name;
  - a write that failed (changed nothing) while a gold write was due, when that gold write never comes: the failed
    attempt is the deviation. Decisive: its name when it is another tool than the due write, else the argument values
    that differ (a wrong tool name is a call error, not a final-answer error);
  - otherwise (all calls consistent, but a gold write is missing or the answer lacks a required fact) the final
    answer is what is wrong: every token of the last assistant turn.
* **successful rollout**: the argument values of its state-changing calls (the name of a transfer), plus, an
  extension for tasks with no state change, the required answer facts where the final answer states them.

Everything works on the raw text of the assistant turns (what the policy generated, `<tool_call>` blocks included),
so labels map onto tokens by character offsets: `decisive_spans` gives `(turn, start, end)` spans,
`token_mask_from_spans` marks the tokens that overlap them, and `decisive_token_mask` does both for a TRL-layout
completion (generated turns where `tool_mask` is 1, tool observations where it is 0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

WRITE_TOOLS = ("book_reservation", "cancel_reservation", "update_reservation_flights", "transfer_to_human_agents")
"""The airline tools that change state (the transfer flag counts: the verifier checks it)."""

_BLOCK_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_END_RE = re.compile(r"(\s|<\|im_end\|>|<\|endoftext\|>)+$")


@dataclass(frozen=True)
class ParsedCall:
    """One `<tool_call>` block of a turn: name, arguments (`None` when not a JSON object) and character spans."""

    name: str | None
    arguments: dict | None
    block: tuple[int, int]
    name_span: tuple[int, int] | None
    argument_spans: dict


@dataclass(frozen=True)
class DecisiveSpan:
    """Characters `[start, end)` of assistant turn `turn` that decided the rollout, and why (`kind`, `reason`)."""

    turn: int
    start: int
    end: int
    kind: str
    reason: str


def _value_span(text: str, start: int) -> tuple[int, int] | None:
    """Span of the JSON value that starts at `start` (quotes of a string excluded), or `None`."""
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    if text[start] == '"' and end - start >= 2:
        return start + 1, end - 1
    return start, end


def parse_turn(text: str) -> list[ParsedCall]:
    """The tool calls of one raw assistant turn (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks)."""
    calls = []
    for block in _BLOCK_RE.finditer(text):
        start, body = block.start(1), block.group(1)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            calls.append(ParsedCall(None, None, block.span(), None, {}))
            continue
        name = payload.get("name") if isinstance(payload.get("name"), str) else None
        arguments = payload.get("arguments")
        arguments = arguments if isinstance(arguments, dict) else None
        found = re.search(r'"name"\s*:\s*', body)
        name_span = _value_span(body, found.end()) if found else None
        spans = {}
        anchor = re.search(r'"arguments"\s*:\s*', body)
        if anchor and arguments:
            for key in arguments:
                hit = re.compile(rf'"{re.escape(key)}"\s*:\s*').search(body, anchor.end())
                span = _value_span(body, hit.end()) if hit else None
                if span is not None:
                    spans[key] = (start + span[0], start + span[1])
        name_span = (start + name_span[0], start + name_span[1]) if name_span else None
        calls.append(ParsedCall(name, arguments, block.span(), name_span, spans))
    return calls


def final_answer_text(turn_text: str) -> str:
    """The content of an assistant turn: its text without tool-call blocks and end-of-turn tokens."""
    return _END_RE.sub("", _BLOCK_RE.sub("", turn_text)).strip()


def _whole_turn(turn: int, text: str, kind: str, reason: str) -> DecisiveSpan:
    end = _END_RE.search(text)
    return DecisiveSpan(turn, 0, end.start() if end else len(text), kind, reason)


def _normalise(name: str, arguments: dict) -> dict:
    out = {k: (v.strip() if isinstance(v, str) else v) for k, v in arguments.items()}
    if isinstance(out.get("flight_numbers"), str):
        out["flight_numbers"] = [out["flight_numbers"]]
    if name == "book_reservation":
        out.setdefault("insurance", False)
    return out


def _leaves(value) -> list[str]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [] if isinstance(value, bool) or value is None else [str(value)]


def _replay(task: dict, turns: Sequence[str], executed: Sequence[bool]):
    """Execute the parsed calls of the executed turns on a fresh environment. Yields `(turn, call, error, obs)`."""
    from trl_sgcd.envs.airline import airline_environment, tool_names

    env_class = airline_environment(task.get("profile", "full"))  # the profile's own tools and rules
    env = env_class(task["seed"])
    env.reset(task_id=task["task_id"], seed=task["seed"])
    names = set(tool_names(env_class))
    steps = []
    for t, text in enumerate(turns):
        for call in parse_turn(text):
            if not executed[t]:
                steps.append((t, call, None, None))
                continue
            if call.name not in names or call.arguments is None:
                steps.append((t, call, "unknown tool or malformed call", ""))
                continue
            observation = getattr(env, call.name)(**call.arguments)
            steps.append((t, call, env.calls[-1]["error"], observation))
    return env, steps


def _mismatch(call: ParsedCall, gold: dict | None, turn: int) -> list[DecisiveSpan]:
    """Spans of a state-changing call that is not the pending gold write."""
    whole = call.name_span or call.block
    if gold is None or gold["name"] != call.name:
        why = (
            "state change where no gold write was due" if gold is None else f"called {call.name}, gold {gold['name']}"
        )
        return [DecisiveSpan(turn, *whole, "call_name", why)]
    mine, want = _normalise(call.name, call.arguments), _normalise(gold["name"], gold["arguments"])
    keys = [k for k in sorted(set(mine) | set(want)) if mine.get(k) != want.get(k)]
    spans = [
        DecisiveSpan(turn, *call.argument_spans[k], "call_argument", f"{k} differs")
        for k in keys
        if k in call.argument_spans
    ]
    return spans or [DecisiveSpan(turn, *whole, "call_name", "arguments missing: " + ", ".join(keys))]


def _matches(call: ParsedCall, gold: dict) -> bool:
    if call.name != gold["name"]:
        return False
    if call.name == "transfer_to_human_agents":
        return True
    return _normalise(call.name, call.arguments) == _normalise(gold["name"], gold["arguments"])


def decisive_spans(
    task: dict, turns: Sequence[str], *, executed: Sequence[bool] | None = None, success: bool | None = None
) -> list[DecisiveSpan]:
    """The decisive character spans of a rollout (rules in the module docstring).

    Args:
        task (`dict`):
            The airline task (`get_task(task_id, seed=...)`), with its gold actions.
        turns (`Sequence[str]`):
            Raw text of each assistant turn, in order, as generated (tool-call blocks included).
        executed (`Sequence[bool]`, *optional*):
            Whether the calls of each turn were executed (followed by tool observations). Default: every turn but
            the last.
        success (`bool`, *optional*):
            The verified outcome; computed by replaying the calls and scoring the final answer when `None`.

    Returns:
        `list[DecisiveSpan]`: spans into `turns[span.turn]`; empty for a success without state change or fact.
    """
    from trl_sgcd.envs.airline import score_episode

    turns = list(turns)
    if not turns:
        return []
    executed = [t < len(turns) - 1 for t in range(len(turns))] if executed is None else list(executed)
    env, steps = _replay(task, turns, executed)
    answer = final_answer_text(turns[-1])
    if success is None:
        success = score_episode(env, answer) >= 1.0
    if success:
        return _success_spans(task, turns, steps, answer)
    pending = [g for g in task["gold_actions"] if g["name"] in WRITE_TOOLS]
    grounded = [task["instruction"].lower(), *(v.lower() for g in task["gold_actions"] for v in _leaves(g))]
    attempt = None  # the first write that failed while a gold write was due: the deviation if that write never comes
    for turn, call, error, observation in steps:
        if observation is None:  # not executed: part of the final turn
            break
        if call.name is None or call.arguments is None or error == "unknown tool or malformed call":
            return [DecisiveSpan(turn, *(call.name_span or call.block), "call_name", "unknown tool or malformed")]
        changes = call.name == "transfer_to_human_agents" or (call.name in WRITE_TOOLS and error is None)
        if changes:
            if pending and _matches(call, pending[0]):
                pending.pop(0)
            else:
                return _mismatch(call, pending[0] if pending else None, turn)
        else:
            if attempt is None and pending and call.name in WRITE_TOOLS and error is not None:
                attempt = (turn, call)
            unseen = [
                k
                for k, v in call.arguments.items()
                if any(not any(leaf.lower() in text for text in grounded) for leaf in _leaves(v))
            ]
            spans = [
                DecisiveSpan(turn, *call.argument_spans[k], "call_argument", f"{k}: unseen value")
                for k in unseen
                if k in call.argument_spans
            ]
            if unseen:
                return spans or [DecisiveSpan(turn, *(call.name_span or call.block), "call_name", "unseen value")]
        grounded.append(str(observation).lower())
    if pending and attempt is not None:  # the due write was attempted with another tool or other arguments
        return _mismatch(attempt[1], pending[0], attempt[0])
    why = "a gold write is missing" if pending else "the final answer lacks a required fact"
    return [_whole_turn(len(turns) - 1, turns[-1], "final_answer", why)]


def _success_spans(task: dict, turns, steps, answer: str) -> list[DecisiveSpan]:
    spans = []
    for turn, call, error, observation in steps:
        if observation is None or call.name not in WRITE_TOOLS:
            continue
        if call.name == "transfer_to_human_agents":
            spans.append(DecisiveSpan(turn, *(call.name_span or call.block), "call_name", "transfer"))
        elif error is None:
            spans += [
                DecisiveSpan(turn, *s, "call_argument", f"{k} of {call.name}") for k, s in call.argument_spans.items()
            ]
    last = len(turns) - 1
    lowered = turns[last].lower()
    for fact in task.get("answer_facts", []):
        for hit in re.finditer(rf"(?<![\w]){re.escape(fact.lower())}(?![\w])", lowered):
            spans.append(DecisiveSpan(last, hit.start(), hit.end(), "answer_fact", f"states {fact!r}"))
    return spans


def token_mask_from_spans(token_texts: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Which tokens overlap a character span of `"".join(token_texts)` (a token partly inside counts)."""
    mask, pos = [], 0
    for text in token_texts:
        end = pos + len(text)
        mask.append(any(s < end and e > pos for s, e in spans) and end > pos)
        pos = end
    return mask


def turn_runs(tool_mask: Sequence[int], completion_mask: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """`[start, end)` of each generated turn of a TRL-layout completion: the runs where `tool_mask` is 1."""
    mask = [int(t) and (completion_mask is None or int(completion_mask[i])) for i, t in enumerate(tool_mask)]
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def decisive_token_mask(
    task: dict,
    completion_ids: Sequence[int],
    tool_mask: Sequence[int],
    tokenizer,
    *,
    completion_mask: Sequence[int] | None = None,
    success: bool | None = None,
) -> list[bool]:
    """Decisive tokens of a TRL-layout completion (generated turns where `tool_mask` is 1, observations where 0).

    A turn's calls count as executed when tool-observation tokens follow it. Returns one flag per completion token.
    """
    return decisive_token_spans(
        task, completion_ids, tool_mask, tokenizer, completion_mask=completion_mask, success=success
    )[0]


def decisive_token_spans(
    task: dict,
    completion_ids: Sequence[int],
    tool_mask: Sequence[int],
    tokenizer,
    *,
    completion_mask: Sequence[int] | None = None,
    success: bool | None = None,
) -> tuple[list[bool], list[DecisiveSpan]]:
    """[`decisive_token_mask`] and the [`DecisiveSpan`]s it comes from (their `kind` says why: for a breakdown)."""
    ids = [int(i) for i in completion_ids]
    valid = [1] * len(ids) if completion_mask is None else [int(m) for m in completion_mask]
    runs = turn_runs(tool_mask, valid)
    pieces = [[tokenizer.decode([tok]) for tok in ids[s:e]] for s, e in runs]
    executed = [e < len(ids) and valid[e] and not int(tool_mask[e]) for _, e in runs]
    spans = decisive_spans(task, ["".join(p) for p in pieces], executed=executed, success=success)
    mask = [False] * len(ids)
    for k, (s, _) in enumerate(runs):
        flags = token_mask_from_spans(pieces[k], [(x.start, x.end) for x in spans if x.turn == k])
        for j, flag in enumerate(flags):
            mask[s + j] = flag
    return mask, spans
