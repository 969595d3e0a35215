"""The mini airline environment: gold solutions verify, wrong behaviour does not, tools never raise, TRL can use it."""

import json
import re
from collections import Counter

import pytest

from trl_sgcd.envs import (
    AIRLINE_POLICY,
    AIRLINE_PRIVATE_COLUMNS,
    SPLIT_MIX,
    AirlineEnv,
    airline_reward,
    airline_tasks,
    airline_tool_schemas,
    build_database,
    contains_fact,
    make_airline_dataset,
    score_episode,
    tool_names,
)
from trl_sgcd.envs.airline_db import luhn_valid
from trl_sgcd.envs.airline_ops import cancellation_allowed

STATE_CHANGING = {"book_reservation", "cancel_reservation", "update_reservation_flights"}
ALL_TASKS = airline_tasks("train") + airline_tasks("test")


def _start(task):
    env = AirlineEnv()
    env.reset(task_id=task["task_id"], seed=task["seed"])
    return env


def _replay(task, actions=None):
    env = _start(task)
    for action in task["gold_actions"] if actions is None else actions:
        getattr(env, action["name"])(**action["arguments"])
    return env


def _first(category, kind=None, split="train"):
    return next(t for t in airline_tasks(split) if t["category"] == category and kind in (None, t["kind"]))


# --- gold solutions and the verifier --------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gold_solution_earns_reward_one(split):
    for task in airline_tasks(split):
        env = _replay(task)
        assert env.tool_failures == 0, (task["task_id"], env.calls)
        assert score_episode(env, task["expert_answer"]) == 1.0, task["task_id"]


def test_missing_state_change_earns_zero():
    for task in [t for t in ALL_TASKS if t["category"] == "action"][:20]:
        lookups_only = [a for a in task["gold_actions"] if a["name"] not in STATE_CHANGING]
        assert score_episode(_replay(task, lookups_only), task["expert_answer"]) == 0.0, task["task_id"]


def test_wrong_state_change_earns_zero():
    task = _first("action", "book")
    booking = next(a for a in task["gold_actions"] if a["name"] == "book_reservation")
    other_cabin = next(c for c in ("economy", "business", "basic_economy") if c != booking["arguments"]["cabin"])
    env = _replay(task, [{"name": "book_reservation", "arguments": {**booking["arguments"], "cabin": other_cabin}}])
    if env.tool_failures == 0:  # the wrong cabin was bookable: a different state
        assert score_episode(env, task["expert_answer"]) == 0.0
    twice = _replay(task, task["gold_actions"] + [booking])  # booking twice is a different state too
    assert twice.tool_failures == 0 and score_episode(twice, task["expert_answer"]) == 0.0
    cancel_task = _first("action", "cancel")
    target = cancel_task["gold_actions"][-1]["arguments"]["reservation_id"]
    wrong = next(
        r
        for r in build_database(0)["reservations"].values()
        if r["reservation_id"] != target and cancellation_allowed(r)[0]
    )
    env = _replay(
        cancel_task, [{"name": "cancel_reservation", "arguments": {"reservation_id": wrong["reservation_id"]}}]
    )
    assert env.tool_failures == 0 and score_episode(env, cancel_task["expert_answer"]) == 0.0


def test_information_needs_the_facts():
    infos = [t for t in ALL_TASKS if t["category"] == "information"]
    assert infos and all(t["answer_facts"] for t in infos)
    for task in infos:
        env = _replay(task)
        assert score_episode(env, task["expert_answer"]) == 1.0
        assert score_episode(env, "Sorry, I could not find that information.") == 0.0
    # The verifier checks outcomes, not steps: the facts without a look-up pass (that is what the audit watches),
    # and a state change next to the right answer fails.
    task = next(t for t in infos if t["kind"] == "gift_card_balance")
    assert score_episode(_replay(task, []), task["expert_answer"]) == 1.0
    card = next(p for p in build_database(0)["users"][task["user_id"]]["payment_methods"] if "credit" in p)
    flight = next(
        f
        for f in build_database(0)["flights"].values()
        if f["status"] != "cancelled" and f["available_seats"]["economy"] > 0
    )
    booking = {
        "user_id": task["user_id"],
        "flight_numbers": [flight["flight_number"]],
        "cabin": "economy",
        "payment_id": card,
    }
    env = _replay(task, task["gold_actions"] + [{"name": "book_reservation", "arguments": booking}])
    assert env.tool_failures == 0 and score_episode(env, task["expert_answer"]) == 0.0


def test_no_action_gold_refuses_and_forbidden_actions_are_rejected():
    tasks = [t for t in ALL_TASKS if t["category"] == "no_action"]
    assert tasks
    for task in tasks:
        assert not {a["name"] for a in task["gold_actions"]} & STATE_CHANGING
        env = _replay(task)
        assert env.db == build_database(task["seed"]) and not env.transferred
        assert "sorry" in task["expert_answer"].lower()
        rid = re.search(r"reservation (\w{6})", task["instruction"]).group(1)
        if task["kind"] == "cancel_refused":
            observation = env.cancel_reservation(reservation_id=rid)
        else:
            flight = re.search(r"flight (HAT\d{3})", task["instruction"]).group(1)
            card = next(p for p in env.db["users"][task["user_id"]]["payment_methods"] if p.startswith("credit_card"))
            observation = env.update_reservation_flights(reservation_id=rid, flight_numbers=[flight], payment_id=card)
        assert "not allowed by policy" in json.loads(observation)["error"]
        assert env.db == build_database(task["seed"]) and score_episode(env, task["expert_answer"]) == 1.0


def test_transfer_tasks_need_the_transfer_call():
    tasks = [t for t in ALL_TASKS if t["category"] == "transfer"]
    assert tasks
    for task in tasks:
        assert task["gold_actions"][-1]["name"] == "transfer_to_human_agents"
        assert score_episode(_replay(task, task["gold_actions"][:-1]), task["expert_answer"]) == 0.0
    action = _first("action")
    spurious = action["gold_actions"] + [{"name": "transfer_to_human_agents", "arguments": {"summary": "help"}}]
    assert score_episode(_replay(action, spurious), action["expert_answer"]) == 0.0


def test_airline_reward_reads_the_last_assistant_message():
    task = _first("information")
    env = _replay(task)
    completion = [
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "tool", "name": "x", "content": "{}"},
        {"role": "assistant", "content": task["expert_answer"]},
    ]
    assert airline_reward([completion, completion[:2]], environments=[env, env]) == [1.0, 0.0]
    assert airline_reward([task["expert_answer"]], environments=[env]) == [1.0]
    with pytest.raises(ValueError):
        airline_reward([completion])


def test_contains_fact():
    assert contains_fact("That is $1,500.", "1500") and contains_fact("It costs $150.00", "150")
    assert not contains_fact("It costs $1500", "150")
    assert contains_fact("Flight HAT042 is On Time.", "on time") and not contains_fact("HAT0425", "HAT042")


# --- determinism and splits -------------------------------------------------------------------------------------


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert build_database(0) == build_database(0)
    assert airline_tasks("test", seed=0) == airline_tasks("test", seed=0)
    task = airline_tasks("test")[0]
    observations = [
        [getattr(env, a["name"])(**a["arguments"]) for a in task["gold_actions"]]
        for env in (_start(task), _start(task))
    ]
    assert observations[0] == observations[1]
    assert build_database(1) != build_database(0)
    assert [t["instruction"] for t in airline_tasks("test", seed=1)] != [
        t["instruction"] for t in airline_tasks("test")
    ]


def test_splits_are_disjoint_and_follow_the_mix():
    train, test = airline_tasks("train"), airline_tasks("test")
    assert not {t["task_id"] for t in train} & {t["task_id"] for t in test}
    assert not {t["user_id"] for t in train} & {t["user_id"] for t in test}
    reservation_ids = set(build_database(0)["reservations"])

    def reservations(tasks):
        return {w for t in tasks for w in re.findall(r"\b[A-Z0-9]{6}\b", t["instruction"]) if w in reservation_ids}

    assert not reservations(train) & reservations(test)
    for split, tasks in (("train", train), ("test", test)):
        assert Counter(t["category"] for t in tasks) == Counter(SPLIT_MIX[split])
        assert len({t["instruction"] for t in tasks}) == len(tasks)
        assert all(1 <= len(t["gold_actions"]) <= 3 for t in tasks)
    assert SPLIT_MIX["test"] == {"action": 13, "information": 4, "transfer": 1, "no_action": 2}


def test_database_is_realistic_and_sensitive():
    db = build_database(0)
    cards = [m for u in db["users"].values() for m in u["payment_methods"].values() if m["source"] == "credit_card"]
    assert cards and all(len(c["card_number"]) == 16 and luhn_valid(c["card_number"]) for c in cards)
    assert all(re.fullmatch(r"HAT\d{3}", f) for f in db["flights"])
    user = next(iter(db["users"].values()))
    env = AirlineEnv()
    env.reset(task_id=airline_tasks("train")[0]["task_id"])
    observation = env.get_user_details(user_id=user["user_id"])
    assert user["email"] in observation and user["phone"] in observation and "card_number" in observation


# --- tools never raise --------------------------------------------------------------------------------------------


def test_bad_arguments_return_error_observations():
    task = _first("action", "change")
    env = _start(task)
    change = task["gold_actions"][-1]["arguments"]
    bad_calls = [
        lambda: env.get_user_details(user_id="nobody_0000"),
        lambda: env.get_user_details(user_id=123),
        lambda: env.get_user_details(),
        lambda: env.get_user_details(user_id=task["user_id"], extra=1),
        lambda: env.get_reservation_details(reservation_id="ZZZZZZ"),
        lambda: env.search_direct_flight(origin="JFK", destination="LAX"),
        lambda: env.book_reservation(
            user_id=task["user_id"], flight_numbers=["HAT999x"], cabin="economy", payment_id="x"
        ),
        lambda: env.book_reservation(user_id=task["user_id"], flight_numbers=[1], cabin="economy", payment_id="x"),
        lambda: env.book_reservation(
            user_id=task["user_id"],
            flight_numbers=change["flight_numbers"],
            cabin="first",
            payment_id=change["payment_id"],
        ),
        lambda: env.book_reservation(
            user_id=task["user_id"],
            flight_numbers=change["flight_numbers"],
            cabin="economy",
            payment_id="gift_card_0000000",
        ),
        lambda: env.update_reservation_flights(
            reservation_id=change["reservation_id"], flight_numbers=[], payment_id=change["payment_id"]
        ),
        lambda: env.cancel_reservation(reservation_id=None),
    ]
    before = build_database(task["seed"])
    for i, call in enumerate(bad_calls):
        observation = call()
        assert isinstance(observation, str) and "error" in json.loads(observation), (i, observation)
    assert env.tool_calls == env.tool_failures == len(bad_calls)
    assert env.db == before
    assert all(c["error"] for c in env.calls)
    fresh = AirlineEnv()
    assert "error" in json.loads(fresh.get_user_details(user_id="x"))  # not reset yet


def test_reset_accepts_a_full_dataset_row_and_starts_fresh():
    row = make_airline_dataset("train", n=3)[1]
    env = AirlineEnv()
    assert env.reset(**row) is None and env.task["task_id"] == row["task_id"]
    env.transfer_to_human_agents(summary="x")
    env.get_user_details(user_id="nobody")
    env.reset(**row)  # TRL pools instances and resets them for the next batch
    assert (env.tool_calls, env.tool_failures, env.calls, env.transferred) == (0, 0, [], False)
    assert env.db == build_database(0)
    with pytest.raises(ValueError):
        env.reset(prompt=row["prompt"])


# --- TRL compatibility --------------------------------------------------------------------------------------------


def test_dataset_columns():
    dataset = make_airline_dataset("test")
    assert set(dataset.column_names) == {"prompt", "task_id", "category", "split", "seed", *AIRLINE_PRIVATE_COLUMNS}
    assert len(dataset) == 20 and len(make_airline_dataset("train", n=10)) == 10
    row = dataset[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"] and row["prompt"][0]["content"] == AIRLINE_POLICY
    assert isinstance(json.loads(row["gold_actions"]), list) and isinstance(json.loads(row["gold_answer"]), list)
    with pytest.raises(ValueError):
        make_airline_dataset("validation")


def test_every_tool_has_a_json_schema():
    from transformers.utils import get_json_schema

    env = AirlineEnv()
    names = tool_names()
    assert set(names) == {
        "get_user_details",
        "get_reservation_details",
        "search_direct_flight",
        "book_reservation",
        "cancel_reservation",
        "update_reservation_flights",
        "transfer_to_human_agents",
    }
    for name in names:
        schema = get_json_schema(getattr(env, name))
        assert schema["function"]["name"] == name and "self" not in schema["function"]["parameters"]["properties"]
    book = next(s for s in airline_tool_schemas() if s["function"]["name"] == "book_reservation")["function"]
    assert book["parameters"]["properties"]["cabin"]["enum"] == ["basic_economy", "economy", "business"]
    assert "insurance" not in book["parameters"]["required"]


def test_prompt_with_tools_renders_for_the_trainer(tiny_model_path):
    from transformers import AutoTokenizer
    from trl.chat_template_utils import add_response_schema, parse_response, supports_tool_calling

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)  # own copy: add_response_schema mutates it

    assert supports_tool_calling(tokenizer)
    env = AirlineEnv()
    methods = [getattr(env, n) for n in tool_names()]
    prompt = make_airline_dataset("test", n=1)[0]["prompt"]
    text = tokenizer.apply_chat_template(prompt, tools=methods, add_generation_prompt=True, tokenize=False)
    assert "<tools>" in text and all(n in text for n in tool_names()) and text.endswith("<|im_start|>assistant\n")
    add_response_schema(tokenizer)
    reply = '<tool_call>\n{"name": "get_user_details", "arguments": {"user_id": "u"}}\n</tool_call><|im_end|>'
    prefix = tokenizer.apply_chat_template(prompt, tools=methods, add_generation_prompt=True, return_dict=True)
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    parsed = parse_response(tokenizer, ids, prefix=prefix["input_ids"], tools=methods)
    assert parsed["tool_calls"][0]["function"] == {"name": "get_user_details", "arguments": {"user_id": "u"}}


def test_grpo_trainer_accepts_the_environment(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=1,
        max_completion_length=16,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        args=args,
        train_dataset=make_airline_dataset("train", n=2),
        environment_factory=AirlineEnv,
        reward_funcs=airline_reward,
    )
    assert sorted(t.__name__ for t in trainer.tools) == sorted(tool_names())
    assert trainer.reward_func_names == ["airline_reward"]  # no `get_reward` column next to it: no double counting


@pytest.mark.slow
def test_grpo_step_with_the_environment(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=1,
        max_completion_length=24,
        max_tool_calling_iterations=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        args=args,
        train_dataset=make_airline_dataset("train", n=4),
        environment_factory=AirlineEnv,
        reward_funcs=airline_reward,
    )
    trainer.train()
    assert "rewards/airline_reward/mean" in trainer.state.log_history[0]
