"""Masked literals on real airline rollouts: a value the student can see stays credit-eligible (paper Appendix B).

The rollouts are scripted (the expert's gold calls, and wrong calls), executed on the bundled `AirlineEnv` and rendered
in TRL's layout with the tiny model's tokenizer (the SmolLM2 tokenizer and ChatML tool template): prompt ids, then a
completion whose tool observations have `tool_mask == 0`. The masked literals come from the real reference builder
with the airline's private columns, as in training.
"""

import json

import pytest
import torch

from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder
from trl_sgcd.credit.scoring.teacher import literal_pattern, literal_token_mask
from trl_sgcd.credit.types import Rollout, SiblingGroup
from trl_sgcd.envs import AIRLINE_PRIVATE_COLUMNS, AirlineEnv, airline_prompt, airline_tool_schemas, get_task
from trl_sgcd.tooluse.expert import expert_turn_ids


def _conversation(task, calls, answer):
    """Messages of a scripted rollout: each call executed on a fresh environment, its real observation kept."""
    env = AirlineEnv(task["seed"])
    env.reset(task_id=task["task_id"], seed=task["seed"])
    messages = airline_prompt(task)
    for name, arguments in calls:
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "name": name, "content": getattr(env, name)(**arguments)})
    messages.append({"role": "assistant", "content": answer})
    return messages


def _render(tokenizer, messages):
    """TRL layout: prompt ids, completion ids, tool mask (0 on observations) and the token range of each turn."""
    turns = expert_turn_ids(tokenizer, messages, airline_tool_schemas())
    prompt = turns[0][0]
    ids, tool_mask, ranges, done = [], [], [], list(prompt)
    for prefix, generated in turns:
        assert prefix[: len(done)] == done  # the template appends: observations, then the next generation prompt
        observation = prefix[len(done) :]
        ids += observation + generated
        tool_mask += [0] * len(observation) + [1] * len(generated)
        ranges.append(range(len(ids) - len(generated), len(ids)))
        done = prefix + generated
    return prompt, torch.tensor([ids]), torch.tensor([tool_mask]), ranges


def _masked_literals(task, messages_by_rollout, success):
    """The literals the contrast reference builder masks for this group (airline private columns)."""
    row = {"gold_actions": json.dumps(task["gold_actions"]), "gold_answer": json.dumps(task["answer_facts"])}
    prompt = airline_prompt(task)
    rollouts = [
        Rollout(i, prompt, m[2:], float(ok), row) for i, (m, ok) in enumerate(zip(messages_by_rollout, success))
    ]
    builder = SiblingReferenceBuilder(private_columns=AIRLINE_PRIVATE_COLUMNS)
    return builder.build([SiblingGroup(0, rollouts, list(success))])[0].masked_literals


def _value_tokens(tokenizer, ids, turn, value):
    """Token positions of `value` inside the generated turn `turn` (a range of positions)."""
    pieces = [tokenizer.decode([t]) for t in ids[0].tolist()]
    offsets = [sum(len(p) for p in pieces[:j]) for j in range(len(pieces) + 1)]
    text = "".join(pieces)
    hits = [m for m in literal_pattern(value).finditer(text) if offsets[turn.start] <= m.start() < offsets[turn.stop]]
    assert hits, f"{value!r} is not in turn {turn}"
    return [j for j in turn if offsets[j] < hits[0].end() and offsets[j + 1] > hits[0].start()]


WRONG_WRITES = {
    # A cancellation the policy forbids (booked > 24 h ago, no insurance, economy), without looking the reservation up:
    # the decisive error is the call, and its id is visible only in the prompt.
    "cancel": (
        "airline-train-004",
        [("cancel_reservation", {"reservation_id": "A2ETBN"})],
        "Your reservation A2ETBN is cancelled.",
        ["A2ETBN"],
    ),
    # The right flight in the wrong cabin: the user id and payment id come from the prompt, the flight number from the
    # search observation; every one of them is a private gold value.
    "book": (
        "airline-train-011",
        [
            ("search_direct_flight", {"origin": "SFO", "destination": "LAS", "date": "2026-05-08"}),
            (
                "book_reservation",
                {
                    "user_id": "mei_kowalski_7460",
                    "flight_numbers": ["HAT026"],
                    "cabin": "business",
                    "payment_id": "credit_card_2031331",
                },
            ),
        ],
        "I booked flight HAT026 for you.",
        ["mei_kowalski_7460", "HAT026", "credit_card_2031331"],
    ),
}


@pytest.mark.parametrize("kind", sorted(WRONG_WRITES))
def test_arguments_of_a_wrong_write_call_are_eligible(tokenizer, kind):
    task_id, calls, answer, arguments = WRONG_WRITES[kind]
    task = get_task(task_id, seed=0)
    expert = _conversation(task, [(a["name"], a["arguments"]) for a in task["gold_actions"]], task["expert_answer"])
    wrong = _conversation(task, calls, answer)
    literals = _masked_literals(task, [expert, wrong], [True, False])
    prompt, ids, tool_mask, turns = _render(tokenizer, wrong)
    write_turn = turns[len(calls) - 1]
    positions = {value: _value_tokens(tokenizer, ids, write_turn, value) for value in arguments}
    # Not vacuous: every argument is a literal the sanitizer masked, and the old rule (no visibility) masks its tokens.
    assert {value.lower() for value in arguments} <= {lit.lower() for lit in literals}
    blind = literal_token_mask(ids, [literals], tokenizer)
    assert all(blind[0, positions[value]].all() for value in arguments)

    mask = literal_token_mask(ids, [literals], tokenizer, prompt_ids=[prompt], tool_mask=tool_mask)
    eligible = tool_mask.bool() & ~mask  # (1, T)
    for value in arguments:
        assert eligible[0, positions[value]].all(), f"{value!r} in the wrong {kind} call is not credit-eligible"


def test_gold_answer_is_masked_unless_an_observation_showed_it(tokenizer):
    task = get_task("airline-train-002", seed=0)  # "How much did I pay in total for reservation SV57PM?" -> 258
    looked_up = _conversation(
        task, [("get_reservation_details", {"reservation_id": "SV57PM"})], "You paid $258 in total for SV57PM."
    )
    guessed = _conversation(task, [], "You paid $258 in total for SV57PM.")
    literals = _masked_literals(task, [looked_up, guessed], [True, False])
    assert "258" in literals
    for messages, masked in ((looked_up, False), (guessed, True)):
        prompt, ids, tool_mask, turns = _render(tokenizer, messages)
        answer = _value_tokens(tokenizer, ids, turns[-1], "258")
        mask = literal_token_mask(ids, [literals], tokenizer, prompt_ids=[prompt], tool_mask=tool_mask)
        assert bool(mask[0, answer].all()) is masked  # a guessed gold value stays masked; an observed one does not
        assert not mask[0, _value_tokens(tokenizer, ids, turns[-1], "SV57PM")].any()  # in the prompt


def test_whole_values_only(tokenizer):
    ids = torch.tensor([tokenizer("total 12580 then 258, and 258x", add_special_tokens=False)["input_ids"]])
    mask = literal_token_mask(ids, [["258"]], tokenizer)
    marked = [tokenizer.decode([t]) for t in ids[0][mask[0]].tolist()]
    assert "".join(marked).replace(" ", "") == "258"  # only the standalone value, not inside 12580 or 258x


def test_visible_in_prompt_case_insensitive(tokenizer):
    ids = torch.tensor([tokenizer("reservation 6N88YL please", add_special_tokens=False)["input_ids"]])
    prompt = tokenizer("my reservation 6n88yl", add_special_tokens=False)["input_ids"]
    assert literal_token_mask(ids, [["6N88YL"]], tokenizer).any()
    assert not literal_token_mask(ids, [["6N88YL"]], tokenizer, prompt_ids=[prompt]).any()
    other = tokenizer("my reservation 6n88ylz", add_special_tokens=False)["input_ids"]  # not the same value
    assert literal_token_mask(ids, [["6N88YL"]], tokenizer, prompt_ids=[other]).any()
    with pytest.raises(ValueError, match="prompt_ids"):
        literal_token_mask(ids, [["6N88YL"]], tokenizer, prompt_ids=[prompt, prompt])
