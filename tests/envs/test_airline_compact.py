"""The compact airline profile: the same verifier and split discipline as the full one, a prompt under 350 tokens,
only tasks its three tools solve, and a decisive deviation in every failure."""

import json
import re
from collections import Counter

import pytest

from trl_sgcd.envs import (
    AirlineEnv,
    CompactAirlineEnv,
    airline_environment,
    airline_prompt,
    airline_reward,
    airline_tasks,
    airline_tool_schemas,
    build_database,
    make_airline_dataset,
    score_episode,
    tool_names,
)
from trl_sgcd.envs.airline_tasks import COMPACT_SPLIT_MIX, get_task
from trl_sgcd.envs.decisive import decisive_spans

COMPACT = airline_tasks("train", profile="compact") + airline_tasks("test", profile="compact")


def _replay(task, actions=None, env_class=CompactAirlineEnv):
    env = env_class()
    env.reset(task_id=task["task_id"], seed=task["seed"])
    for action in task["gold_actions"] if actions is None else actions:
        getattr(env, action["name"])(**action["arguments"])
    return env


def test_compact_tools_are_the_three_the_tasks_need():
    assert sorted(tool_names(CompactAirlineEnv)) == [
        "cancel_reservation",
        "get_reservation_details",
        "transfer_to_human_agents",
    ]
    assert airline_environment("compact") is CompactAirlineEnv and airline_environment("full") is AirlineEnv
    assert {a["name"] for t in COMPACT for a in t["gold_actions"]} <= set(tool_names(CompactAirlineEnv))
    with pytest.raises(ValueError, match="profile"):
        airline_environment("tiny")


def test_every_compact_gold_solution_earns_reward_one_and_a_no_op_does_not_for_writes():
    for task in COMPACT:
        env = _replay(task)
        assert env.tool_failures == 0, (task["task_id"], env.calls)
        assert score_episode(env, task["expert_answer"]) == 1.0, task["task_id"]
        if task["category"] in ("action", "transfer"):  # the state change (or transfer) is what success needs
            assert score_episode(_replay(task, actions=[]), task["expert_answer"]) == 0.0, task["task_id"]


def test_compact_splits_are_disjoint_follow_the_mix_and_keep_full_task_ids():
    train, test = airline_tasks("train", profile="compact"), airline_tasks("test", profile="compact")
    assert not {t["user_id"] for t in train} & {t["user_id"] for t in test}
    assert {t["user_id"] for t in train} <= {t["user_id"] for t in airline_tasks("train")} | {
        u for u in build_database(0)["users"] if u not in {t["user_id"] for t in airline_tasks("test")}
    }
    reservation_ids = set(build_database(0)["reservations"])

    def reservations(tasks):
        return {w for t in tasks for w in re.findall(r"\b[A-Z0-9]{6}\b", t["instruction"]) if w in reservation_ids}

    assert not reservations(train) & reservations(test)
    for split, tasks in (("train", train), ("test", test)):
        assert Counter(t["category"] for t in tasks) == Counter(COMPACT_SPLIT_MIX[split])
        assert all(1 <= len(t["gold_actions"]) <= 2 for t in tasks)
        assert all(t["task_id"].startswith(f"airline-compact-{split}-") for t in tasks)
    assert get_task(train[3]["task_id"]) == train[3]
    assert airline_tasks("train")[0]["task_id"] == "airline-train-000"  # the full profile keeps its ids


def test_compact_env_refuses_full_profile_tasks_and_full_env_runs_compact_ones():
    with pytest.raises(ValueError, match="compact"):
        CompactAirlineEnv().reset(task_id="airline-train-000")
    task = airline_tasks("train", profile="compact")[0]
    assert score_episode(_replay(task, env_class=AirlineEnv), task["expert_answer"]) == 1.0


def test_compact_prompt_is_under_350_tokens_of_system_text_and_schemas():
    from transformers import AutoTokenizer

    from trl_sgcd.tooluse.models import bundled_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir())
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    task = airline_tasks("train", profile="compact")[0]
    compact = count(airline_prompt(task)[0]["content"]) + count(
        "\n".join(json.dumps(s) for s in airline_tool_schemas("compact"))
    )
    full = count(airline_prompt(airline_tasks("train")[0])[0]["content"]) + count(
        "\n".join(json.dumps(s) for s in airline_tool_schemas("full"))
    )
    assert compact <= 350 < full


def test_dataset_and_reward_of_the_compact_profile():
    rows = make_airline_dataset("train", n=4, profile="compact")
    assert all(r["task_id"].startswith("airline-compact-train-") for r in rows)
    envs = []
    for row in rows:
        env = CompactAirlineEnv()
        env.reset(**row)
        envs.append(env)
    answers = [[{"role": "assistant", "content": "done"}] for _ in envs]
    # a no-op succeeds exactly on the no-action tasks (the database stays gold, no fact is needed)
    assert airline_reward(answers, environments=envs) == [float(r["category"] == "no_action") for r in rows]


def _call(name, **arguments):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_every_compact_failure_kind_has_a_decisive_deviation():
    tasks = airline_tasks("train", profile="compact")
    refused = next(t for t in tasks if t["kind"] == "cancel_refused")
    rid = refused["gold_actions"][0]["arguments"]["reservation_id"]
    # the forbidden cancel is the decisive call of a refused-cancel failure
    turns = [
        _call("get_reservation_details", reservation_id=rid),
        _call("cancel_reservation", reservation_id=rid),
        "Done.",
    ]
    forbidden = [refused["gold_actions"][0], {"name": "cancel_reservation", "arguments": {"reservation_id": rid}}]
    assert score_episode(_replay(refused, actions=forbidden), refused["expert_answer"]) == 0.0  # the agent decides
    spans = decisive_spans(get_task(refused["task_id"]), turns)
    assert spans and any(s.turn == 1 and s.kind != "final_answer" for s in spans)
    # a transfer task answered without the transfer: the final answer is decisive
    transfer = next(t for t in tasks if t["kind"] == "out_of_scope")
    spans = decisive_spans(get_task(transfer["task_id"]), ["Sure, I have noted that."], success=False)
    assert spans and spans[0].turn == 0
    # a wrong reservation id in the cancel of a cancel task
    cancel = next(t for t in tasks if t["kind"] == "cancel")
    rid = cancel["gold_actions"][0]["arguments"]["reservation_id"]
    turns = [
        _call("get_reservation_details", reservation_id=rid),
        _call("cancel_reservation", reservation_id="ZZZZZZ"),
        "Done.",
    ]
    spans = decisive_spans(get_task(cancel["task_id"]), turns, success=False)
    assert spans and any(s.turn == 1 for s in spans)
