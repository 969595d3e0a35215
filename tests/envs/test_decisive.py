"""Decisive tokens: scripted expert trajectories (successes) and scripted wrong trajectories (failures) of real tasks."""

import pytest

from trl_sgcd.envs.airline import AirlineEnv, airline_prompt, airline_tool_schemas
from trl_sgcd.envs.airline_tasks import airline_tasks
from trl_sgcd.envs.decisive import (
    decisive_spans,
    decisive_token_mask,
    parse_turn,
    token_mask_from_spans,
    turn_runs,
)
from trl_sgcd.tooluse.expert import expert_conversation, expert_turn_ids

TASKS = airline_tasks("train")


def _first(kind):
    return next(t for t in TASKS if t["kind"] == kind)


def _conversation(task, calls, answer):
    """A scripted conversation: each call executed on a real environment, then a final answer."""
    env = AirlineEnv(task["seed"])
    env.reset(task_id=task["task_id"], seed=task["seed"])
    messages = airline_prompt(task)
    for name, arguments in calls:
        messages.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
            }
        )
        messages.append({"role": "tool", "name": name, "content": getattr(env, name)(**arguments)})
    messages.append({"role": "assistant", "content": answer})
    return messages


def _turns(tokenizer, conversation):
    return [tokenizer.decode(ids) for _, ids in expert_turn_ids(tokenizer, conversation, airline_tool_schemas())]


def _texts(turns, spans):
    return [turns[s.turn][s.start : s.end] for s in spans]


@pytest.mark.parametrize("kind", ["cancel", "book", "change", "book_search", "book_gift_card"])
def test_expert_success_marks_the_arguments_of_its_writes(tokenizer, kind):
    task = _first(kind)
    turns = _turns(tokenizer, expert_conversation(task))
    spans = decisive_spans(task, turns)  # success computed by replay
    write = next(
        g
        for g in task["gold_actions"]
        if g["name"] not in ("get_reservation_details", "get_user_details", "search_direct_flight")
    )
    assert {s.turn for s in spans} == {len(task["gold_actions"]) - 1}
    assert all(s.kind == "call_argument" for s in spans)
    texts = _texts(turns, spans)
    for key, value in write["arguments"].items():
        shown = value[0] if isinstance(value, list) else value
        assert any(str(shown).lower() in t.lower() for t in texts), (key, texts)


def test_expert_transfer_marks_the_name_and_information_marks_the_fact(tokenizer):
    task = _first("out_of_scope")
    turns = _turns(tokenizer, expert_conversation(task))
    assert _texts(turns, decisive_spans(task, turns)) == ["transfer_to_human_agents"]
    task = _first("reservation_total")
    turns = _turns(tokenizer, expert_conversation(task))
    spans = decisive_spans(task, turns)
    assert [s.kind for s in spans] == ["answer_fact"] and _texts(turns, spans) == task["answer_facts"]
    task = _first("cancel_refused")  # a correct refusal changes nothing and states no fact: nothing is decisive
    assert decisive_spans(task, _turns(tokenizer, expert_conversation(task))) == []


def test_wrong_write_argument_is_decisive(tokenizer):
    task = _first("cancel")
    rid = task["gold_actions"][0]["arguments"]["reservation_id"]
    other = next(r for t in TASKS for r in [t["gold_actions"][0]["arguments"].get("reservation_id")] if r and r != rid)
    calls = [("get_reservation_details", {"reservation_id": rid}), ("cancel_reservation", {"reservation_id": other})]
    turns = _turns(tokenizer, _conversation(task, calls, "Done, it is cancelled."))
    spans = decisive_spans(task, turns)
    assert len(spans) == 1 and spans[0].turn == 1 and spans[0].kind == "call_argument"
    assert _texts(turns, spans) == [other]


def test_wrong_tool_name_is_decisive(tokenizer):
    task = _first("cancel")
    rid = task["gold_actions"][0]["arguments"]["reservation_id"]
    calls = [("transfer_to_human_agents", {"summary": f"cancel {rid}"})]
    turns = _turns(tokenizer, _conversation(task, calls, "A human agent will help you."))
    spans = decisive_spans(task, turns)
    assert [(s.turn, s.kind) for s in spans] == [(0, "call_name")] and _texts(turns, spans) == [
        "transfer_to_human_agents"
    ]


def test_a_failed_write_with_the_wrong_tool_name_is_a_call_error_not_a_final_answer_error(tokenizer):
    task = _first("cancel")
    rid = task["gold_actions"][0]["arguments"]["reservation_id"]
    calls = [
        ("get_reservation_details", {"reservation_id": rid}),
        ("update_reservation_flights", {"reservation_id": rid}),  # errors (arguments missing): nothing changes
    ]
    turns = _turns(tokenizer, _conversation(task, calls, "Your reservation is cancelled."))
    spans = decisive_spans(task, turns)
    assert [(s.turn, s.kind) for s in spans] == [(1, "call_name")]
    assert _texts(turns, spans) == ["update_reservation_flights"]
    # the right write after the failed attempt: the attempt was not where the rollout left the gold path
    calls.append(("cancel_reservation", {"reservation_id": rid}))
    turns = _turns(tokenizer, _conversation(task, calls, "Sorry."))
    assert decisive_spans(task, turns, success=False)[0].kind == "final_answer"


def test_hallucinated_lookup_is_decisive_and_a_harmless_lookup_is_not(tokenizer):
    task = _first("cancel")
    rid = task["gold_actions"][0]["arguments"]["reservation_id"]
    calls = [
        ("get_user_details", {"user_id": task["user_id"]}),
        ("get_reservation_details", {"reservation_id": "ZZZ999"}),
    ]
    turns = _turns(tokenizer, _conversation(task, calls, "I could not find it."))
    spans = decisive_spans(task, turns)
    assert [(s.turn, s.kind) for s in spans] == [(1, "call_argument")] and _texts(turns, spans) == ["ZZZ999"]
    # stopping after the right look-up: the calls stay consistent, the final answer is what is wrong
    calls = [("get_user_details", {"user_id": task["user_id"]}), ("get_reservation_details", {"reservation_id": rid})]
    turns = _turns(tokenizer, _conversation(task, calls, "Your reservation is cancelled."))
    spans = decisive_spans(task, turns)
    assert [(s.turn, s.kind) for s in spans] == [(2, "final_answer")]
    assert _texts(turns, spans) == ["Your reservation is cancelled."]


def test_wrong_information_answer_is_decisive(tokenizer):
    task = _first("reservation_total")
    calls = [(g["name"], g["arguments"]) for g in task["gold_actions"]]
    turns = _turns(tokenizer, _conversation(task, calls, "You paid $1 in total."))
    spans = decisive_spans(task, turns)
    assert [(s.turn, s.kind) for s in spans] == [(1, "final_answer")]
    assert decisive_spans(task, turns, success=True) == []  # the caller's outcome wins over the replay


def test_parse_turn_spans_point_at_the_values():
    text = '<tool_call>\n{"name": "book_reservation", "arguments": {"user_id": "u_1", "flight_numbers": ["HAT1"], "insurance": true}}\n</tool_call><|im_end|>'
    (call,) = parse_turn(text)
    assert text[slice(*call.name_span)] == "book_reservation"
    assert {k: text[slice(*s)] for k, s in call.argument_spans.items()} == {
        "user_id": "u_1",
        "flight_numbers": '["HAT1"]',
        "insurance": "true",
    }
    assert parse_turn("<tool_call>{not json</tool_call>")[0].name is None


def test_token_mask_and_trl_layout(tokenizer):
    assert token_mask_from_spans(["ab", "cd", "ef"], [(3, 5)]) == [False, True, True]
    assert token_mask_from_spans(["ab", "cd"], []) == [False, False]
    assert turn_runs([1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 0]) == [(0, 2), (4, 5)]
    task = _first("cancel")
    conversation = expert_conversation(task)
    tools = airline_tool_schemas()
    prompt = tokenizer.apply_chat_template(
        conversation[:2], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    full = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=True, return_dict=True)["input_ids"]
    completion = list(full[len(prompt) :])
    tool_mask = [0] * len(completion)
    turn_ids = [ids for _, ids in expert_turn_ids(tokenizer, conversation, tools)]
    pos = 0
    for ids in turn_ids:  # each generated turn appears verbatim in the rendering; the rest is observations
        while completion[pos : pos + len(ids)] != ids:
            pos += 1
        tool_mask[pos : pos + len(ids)] = [1] * len(ids)
        pos += len(ids)
    mask = decisive_token_mask(task, completion, tool_mask, tokenizer)
    marked = tokenizer.decode([t for t, m in zip(completion, mask) if m])
    rid = task["gold_actions"][-1]["arguments"]["reservation_id"]
    assert rid in marked and len(marked) <= len(rid) + 4  # the id, perhaps with a quote that shares its token
    assert all(tool_mask[i] for i, m in enumerate(mask) if m)  # never an observation token
