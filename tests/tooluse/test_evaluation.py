"""Evaluation loop: real parser and environment with a scripted policy, and a real (tiny, random) model."""

import json

import pytest

from trl_sgcd.envs import AirlineEnv, airline_reward, make_airline_dataset
from trl_sgcd.tooluse.evaluation import evaluate, execute_tool_calls, harness_kwargs, run_episodes
from trl_sgcd.tooluse.expert import expert_conversations, expert_generate_fn
from trl_sgcd.tooluse.harness import PAPER_HARNESS, RolloutHarness


@pytest.fixture(scope="module")
def parsing_tokenizer(tiny_model_path):
    """A private tokenizer copy with the response parser attached (`evaluate` attaches it in place)."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import add_response_schema

    return add_response_schema(AutoTokenizer.from_pretrained(tiny_model_path))


def _scripted(tokenizer, conversations):
    return lambda do_sample, seed: expert_generate_fn(tokenizer, conversations)


def _in_unit_interval(value):
    return 0.0 <= value <= 1.0


def test_expert_policy_through_the_real_loop_scores_one(parsing_tokenizer):
    dataset = make_airline_dataset("test")
    conversations = expert_conversations(dataset)
    result = evaluate(
        None,
        parsing_tokenizer,
        dataset,
        environment_factory=AirlineEnv,
        reward_func=airline_reward,
        k=2,
        generate_fn=_scripted(parsing_tokenizer, conversations),
        progress=False,
    )
    assert result["pass@1"] == 1.0 and result["pass^k"] == 1.0 and result["k"] == 2
    assert {c: v["num_tasks"] for c, v in result["per_category"].items()} == {
        "action": 13,
        "information": 4,
        "transfer": 1,
        "no_action": 2,
    }
    assert all(v["pass@1"] == 1.0 for v in result["per_category"].values())
    assert result["audit"]["zero_tool_success_share"] == 0.0 and result["audit"]["tool_failure_rate"] == 0.0
    for record, conversation in zip(result["records"], conversations):
        assert record["success"] and record["sample_rewards"] == [1.0, 1.0]
        assert record["completion"] == conversation[2:]  # parsed turns and real observations equal the expert's
        assert record["final_answer"] == conversation[-1]["content"]


def test_zero_tool_policy_is_caught_by_the_audit(parsing_tokenizer):
    dataset = make_airline_dataset("test")
    answer = parsing_tokenizer("I'm sorry, I cannot help with that.<|im_end|>", add_special_tokens=False)["input_ids"]

    def lazy(do_sample, seed):
        return lambda prompt_ids: [list(answer) for _ in prompt_ids]

    result = evaluate(
        None,
        parsing_tokenizer,
        dataset,
        environment_factory=AirlineEnv,
        reward_func=airline_reward,
        generate_fn=lazy,
        progress=False,
    )
    assert result["pass@1"] == pytest.approx(2 / 20)  # only the no-action tasks: refusing changes nothing
    assert result["per_category"]["no_action"]["pass@1"] == 1.0 and result["per_category"]["action"]["pass@1"] == 0.0
    assert result["audit"]["zero_tool_success_share"] == 1.0 and result["audit"]["tools_per_success"] == 0.0
    assert all(r["num_turns"] == 1 and r["num_tool_calls"] == 0 for r in result["records"])


def test_max_turns_stops_the_loop_without_running_the_last_calls(parsing_tokenizer):
    rows = list(make_airline_dataset("test", n=2))
    call = '<tool_call>\n{"name": "transfer_to_human_agents", "arguments": {"summary": "s"}}\n</tool_call><|im_end|>'
    ids = parsing_tokenizer(call, add_special_tokens=False)["input_ids"]
    episodes = run_episodes(
        rows,
        tokenizer=parsing_tokenizer,
        generate_fn=lambda p: [list(ids) for _ in p],
        environment_factory=AirlineEnv,
        max_turns=3,
        batch_size=1,
    )
    for episode in episodes:
        assert episode["num_turns"] == 3 and episode["env"].tool_calls == 2
        assert [m["role"] for m in episode["completion"]] == ["assistant", "tool"] * 2 + ["assistant"]


def test_execute_tool_calls_matches_trl_contract():
    env = AirlineEnv()
    env.reset(task_id="airline-test-000")

    def boom(x: int) -> str:
        raise RuntimeError("boom")

    tools = {"get_user_details": env.get_user_details, "boom": boom}
    calls = [
        {"type": "function", "function": {"name": "get_user_details", "arguments": {"user_id": "nobody"}}},
        {"type": "function", "function": {"name": "missing", "arguments": {}}},
        {"type": "function", "function": {"name": "boom", "arguments": {"x": 1}}},
        {"name": "get_user_details", "arguments": {"user_id": 7}},  # flat form
    ]
    messages = execute_tool_calls(calls, tools)
    assert [m["name"] for m in messages] == ["get_user_details", "missing", "boom", "get_user_details"]
    assert "error" in json.loads(messages[0]["content"]) and "error" in json.loads(messages[3]["content"])
    assert messages[1]["content"] == "{'error': 'Tool missing not found.'}"
    assert messages[2]["content"] == "{'error': 'boom'}"


def test_tiny_model_evaluation_is_well_formed(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    dataset = make_airline_dataset("test", n=2)
    rng_state = torch.get_rng_state()
    result = evaluate(
        model,
        tokenizer,
        dataset,
        environment_factory=AirlineEnv,
        reward_func=airline_reward,
        k=2,
        max_turns=2,
        max_new_tokens=8,
        batch_size=2,
        progress=False,
    )
    assert torch.equal(torch.get_rng_state(), rng_state)  # sampling is seeded without touching the global RNG
    assert not model.training
    assert _in_unit_interval(result["pass@1"]) and _in_unit_interval(result["pass^k"])
    assert result["num_tasks"] == 2 and len(result["records"]) == 2
    assert all(
        _in_unit_interval(v["pass@1"]) and _in_unit_interval(v["pass^k"]) for v in result["per_category"].values()
    )
    for key in ("success_rate", "zero_tool_success_share", "tools_per_success", "tool_failure_rate"):
        assert key in result["audit"]
    for record in result["records"]:
        assert len(record["sample_rewards"]) == 2 and 1 <= record["num_turns"] <= 2
        assert record["completion"][0]["role"] == "assistant"
    again = evaluate(
        model,
        tokenizer,
        dataset,
        environment_factory=AirlineEnv,
        reward_func=airline_reward,
        max_turns=2,
        max_new_tokens=8,
        batch_size=2,
        progress=False,
    )
    assert [r["completion"] for r in again["records"]] == [r["completion"] for r in result["records"]]  # greedy


def test_evaluate_rejects_bad_arguments(parsing_tokenizer):
    with pytest.raises(ValueError):
        evaluate(None, parsing_tokenizer, [], environment_factory=AirlineEnv, reward_func=airline_reward)
    with pytest.raises(ValueError):
        evaluate(
            None,
            parsing_tokenizer,
            make_airline_dataset("test", n=1),
            environment_factory=AirlineEnv,
            reward_func=airline_reward,
            k=0,
        )


def _transfer_call_ids(tokenizer):
    call = '<tool_call>\n{"name": "transfer_to_human_agents", "arguments": {"summary": "s"}}\n</tool_call><|im_end|>'
    return tokenizer(call, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("extra, turns, executed", [(-8, 1, 0), (4, 1, 1), (None, 3, 2)])
def test_episode_token_budget_counts_like_trl(parsing_tokenizer, extra, turns, executed):
    """A generation is cut at the budget (no tool runs); tool results that overflow it are dropped and end the episode."""
    ids = _transfer_call_ids(parsing_tokenizer)
    rows = list(make_airline_dataset("test", n=1))
    episodes = run_episodes(
        rows,
        tokenizer=parsing_tokenizer,
        generate_fn=lambda p: [list(ids) for _ in p],
        environment_factory=AirlineEnv,
        max_turns=3,
        max_completion_length=None if extra is None else len(ids) + extra,
        batch_size=1,
    )
    (episode,) = episodes
    assert episode["num_turns"] == turns and episode["env"].tool_calls == executed
    assert bool(episode["completion"][0].get("tool_calls")) == (extra != -8)  # a cut generation loses its call
    assert [m["role"] for m in episode["completion"]].count("tool") == (2 if extra is None else 0)


def test_evaluation_defaults_are_the_training_harness():
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(evaluate).parameters.items()}
    assert {k: defaults[k] for k in harness_kwargs(PAPER_HARNESS)} == harness_kwargs(PAPER_HARNESS)
    assert PAPER_HARNESS.max_turns == 17  # Table 4: 16 tool-calling turns, plus the answer
    assert inspect.signature(run_episodes).parameters["max_turns"].default == PAPER_HARNESS.max_turns


def test_harness_from_a_training_config(tmp_path):
    from trl_sgcd import SGCDConfig

    config = SGCDConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        max_tool_calling_iterations=4,
        max_completion_length=192,
        temperature=0.8,
        top_p=0.9,
    )
    harness = RolloutHarness.from_training_args(config)
    assert (harness.max_turns, harness.max_completion_length, harness.temperature, harness.top_p) == (5, 192, 0.8, 0.9)
    unlimited = RolloutHarness.from_training_args(SGCDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False))
    assert unlimited.max_tool_calls is None and unlimited.max_turns > 10**6  # TRL: None means no limit but the budget


def test_airline_observation_limit_is_policy_side():
    import functools

    from trl_sgcd.envs.airline import PaperAirlineEnv

    plain, limited = AirlineEnv(), PaperAirlineEnv()
    assert isinstance(limited, AirlineEnv) and limited.observation_max_chars == 512
    task = make_airline_dataset("test")[0]
    observations = []
    for env in (plain, limited):
        env.reset(task_id=task["task_id"])
        flight = next(iter(env.db["flights"].values()))  # a search with several flights: > 512 characters
        observations.append(env.search_direct_flight(flight["origin"], flight["destination"], flight["date"]))
    full, cut = observations
    assert len(full) > 512 and cut == full[:512]
    short = functools.partial(AirlineEnv, observation_max_chars=20)()
    short.reset(task_id=task["task_id"])
    assert len(short.get_user_details("nobody")) == 20 and short.tool_failures == 1  # errors are cut too
