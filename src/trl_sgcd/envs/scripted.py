"""Scripted (expert) siblings: `SGCDTrainer(..., scripted_sibling=script)` puts one scripted rollout in every group.

A weak policy rarely produces a mixed group (some siblings succeed, some fail), and SGCD, like any group-relative
method, learns nothing from a group that is all failures. With `scripted_sibling`, the LAST rollout of every group of
`num_generations` is replaced by a scripted one right after `GRPOTrainer._generate` (policy generation and TRL's tool
loop are done, rewards not computed yet): `script(environment)` re-plays that row's episode on its environment and
returns the completion messages, [`render_completion`] turns them into token ids and a tool mask exactly as TRL's
tool loop would have, and everything downstream (the rewards, read from the environment; advantages; the credit
pipeline; the loss) treats the row like any other. Training batches only; evaluation measures the policy alone.

Scripts: [`airline_expert_script`] (the bundled mini-airline's gold actions) and
`trl_sgcd.envs.tau2.scripted.tau2_expert_script` (τ²'s gold actions, which τ²'s evaluator scores 1.0).

What it changes, the scripted row being off-policy: the policy did not sample it, so no sampling log-probabilities
exist; they are NaN, TRL's mark for "not scored by the generator", which TRL's vLLM importance-sampling correction and
its off-policy sequence mask neutralise (ratio 1, no KL evidence). The PPO ratio's old log-probabilities are the current
model's (TRL computes them when it needs them, or uses the detached new ones), so the clipped surrogate does not bound
how far the row is from the policy: its loss is the advantage times the log-likelihood of the scripted tokens, a
supervised term weighted by the group-relative advantage (positive when it succeeds and siblings fail). The row is
not cut to `max_completion_length` (its reward is the whole episode's), and TRL's completion-length metrics, taken
inside `_generate`, describe the policy's rollouts before the replacement.

`scripted_sibling_reward` (below) is NOT a scripted sibling: a fast-path reward that labels the first rollout of each
task a success so that a random model shows the credit mechanism (recipes/tiny_cpu.yaml). For a real expert sibling
use `scripted_sibling=`. It is a training-only reward: its `eval_reward` attribute names the real verifier
(`airline_reward`), which `trl-sgcd eval` scores with instead (any reward function can carry the same mark).
"""

from __future__ import annotations

from collections.abc import Callable

from trl_sgcd.envs.airline import airline_reward


def _render(tokenizer, messages, tools, add_generation_prompt: bool, template_kwargs: dict) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=True,
        **template_kwargs,
    )
    return list(out["input_ids"])


def render_completion(
    tokenizer,
    prompt: list[dict],
    completion: list[dict],
    tools=None,
    template_kwargs: dict | None = None,
    prompt_ids: list[int] | None = None,
) -> tuple[list, list]:
    """
    Token ids and tool mask of a scripted completion, as TRL's tool loop would have produced them.

    Args:
        tokenizer: Tokenizer with a tool chat template.
        prompt (`list[dict]`): The prompt messages (ends with the user message).
        completion (`list[dict]`): Assistant messages (with `tool_calls`) and tool messages, ending with an assistant.
        tools (`list`, *optional*): Tool schemas or callables, as for `apply_chat_template`.
        template_kwargs (`dict`, *optional*): Extra `apply_chat_template` arguments (TRL's `chat_template_kwargs`).
        prompt_ids (`list[int]`, *optional*): The prompt ids TRL generated from; a different rendering is an error.

    Returns:
        `(completion_ids, tool_mask)`: ids after the prompt's generation prompt, up to the final end-of-turn token;
        `tool_mask` is 1 on assistant tokens and 0 on tool results and the headers around them.
    """
    template_kwargs = template_kwargs or {}
    rendered = _render(tokenizer, prompt, tools, True, template_kwargs)
    if prompt_ids is not None and list(prompt_ids) != rendered:
        raise ValueError("the scripted sibling's prompt renders differently from the prompt TRL generated from")
    prompt_ids, start = rendered, len(rendered)
    ids: list[int] = []
    mask: list[int] = []
    for k, message in enumerate(completion):
        next_is_assistant = k + 1 < len(completion) and completion[k + 1]["role"] == "assistant"
        full = _render(tokenizer, prompt + completion[: k + 1], tools, next_is_assistant, template_kwargs)
        if message["role"] == "assistant":
            eos = [i for i, t in enumerate(full) if t == tokenizer.eos_token_id and i >= start + len(ids)]
            full = full[: eos[0] + 1] if eos else full  # the turn ends at its end-of-turn token, as generated
        segment = full[start + len(ids) :]
        if full[: start + len(ids)] != prompt_ids + ids:
            raise ValueError("the chat template does not render the scripted conversation prefix-preservingly")
        ids += segment
        mask += [1 if message["role"] == "assistant" else 0] * len(segment)
    return ids, mask


def scripted_rows(num_rows: int, num_generations: int, offset: int = 0) -> list[int]:
    """Local rows that are the last of their group (groups are `num_generations` consecutive global rows)."""
    return [i for i in range(num_rows) if (offset + i) % num_generations == num_generations - 1]


def inject_scripted_siblings(
    output: tuple,
    *,
    prompts: list,
    environments: list,
    num_generations: int,
    script: Callable,
    tokenizer,
    tools=None,
    offset: int = 0,
    template_kwargs: dict | None = None,
) -> tuple:
    """
    Replace the last rollout of each group in `GRPOTrainer._generate`'s output by a scripted one.

    Args:
        output (`tuple`): `(prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images,
            tool_images)` as `_generate` returns it (lists are modified in place and returned).
        prompts (`list`): The prompts of the rows (message lists).
        environments (`list`): The rows' environments; `script(env)` re-plays its episode and returns the completion.
        num_generations (`int`): Group size.
        script (`Callable`): `script(env) -> list[dict]` (e.g. [`airline_expert_script`]).
        tokenizer: The tokenizer.
        tools (`list`, *optional*): The tools of every prompt, or one list of tools per row.
        offset (`int`, *optional*, defaults to `0`): Global index of the first local row (groups may span ranks).
        template_kwargs (`dict`, *optional*): Extra `apply_chat_template` arguments.
    """
    prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest = output
    per_row = tools if tools and isinstance(tools[0], (list, tuple)) else [tools] * len(completion_ids)
    for row in scripted_rows(len(completion_ids), num_generations, offset):
        completion = script(environments[row])
        ids, mask = render_completion(
            tokenizer, prompts[row], completion, per_row[row], template_kwargs, prompt_ids=prompt_ids[row]
        )
        completion_ids[row] = ids
        completions[row] = completion
        if tool_mask is not None:
            tool_mask[row] = mask
        if logprobs is not None:
            logprobs[row] = [float("nan")] * len(ids)  # not sampled: TRL's importance sampling leaves it alone
    return (prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest)


NEEDS_ENVIRONMENT = "scripted_sibling needs an `environment_factory`: the script plays a row's environment."
"""The one message of that rule: the CLI checks it before the model loads, the trainer again for the Python API."""


def apply_scripted_sibling(
    output: tuple,
    prompts: list,
    *,
    script,
    environments,
    tools,
    tokenizer,
    num_generations: int,
    process_index: int,
    template_kwargs: dict,
) -> tuple[tuple, int]:
    """What `SGCDTrainer._generate` calls on a training batch: `output` with the scripted siblings in it, and how
    many rows the script played. `tools`: the batch's tools (per rollout with `environment_factory`)."""
    if not environments:
        raise ValueError(NEEDS_ENVIRONMENT)
    n = len(output[1])
    output = inject_scripted_siblings(
        output,
        prompts=prompts,
        environments=environments,
        num_generations=num_generations,
        script=script,
        tokenizer=tokenizer,
        tools=tools,
        offset=process_index * n,
        template_kwargs=template_kwargs,
    )
    return output, len(scripted_rows(n, num_generations, process_index * n))


def airline_expert_script(env) -> list[dict]:
    """Restart `env`'s bundled-airline task and play its gold actions, then say the task's expert answer."""
    env.reset(task_id=env.task["task_id"], seed=env.seed)
    completion = []
    for action in env.task["gold_actions"]:
        name, arguments = action["name"], dict(action["arguments"])
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        completion.append({"role": "assistant", "content": "", "tool_calls": [call]})
        completion.append({"role": "tool", "name": name, "content": str(getattr(env, name)(**arguments))})
    completion.append({"role": "assistant", "content": env.task["expert_answer"]})
    return completion


def scripted_sibling_reward(completions: list, environments: list | None = None, task_id=None, **kwargs) -> list:
    """
    Fast path only: `airline_reward`, with the first rollout of each `task_id` in the batch scored 1.0.

    A random test model never solves an airline task, so every group fails and credit never acts; this labels one
    rollout per task a success so that the pipeline runs end to end in seconds (recipes/tiny_cpu.yaml). The "success"
    is a label: the reference is built from a sibling that solved nothing. For a real scripted sibling, pass
    `scripted_sibling=airline_expert_script` to `SGCDTrainer` (see the module docstring).

    Args:
        completions (`list`): completions as TRL passes them.
        environments (`list[AirlineEnv]`): the environment of each rollout.
        task_id (`list[str]`): the dataset column; rollouts of one group share it.

    Returns:
        `list[float]`: one reward per completion.
    """
    rewards = airline_reward(completions, environments=environments)
    if task_id is None:
        raise ValueError("scripted_sibling_reward needs the `task_id` column of make_airline_dataset.")
    seen = set()
    for i, tid in enumerate(task_id):
        if tid not in seen:
            seen.add(tid)
            rewards[i] = 1.0
    return rewards


# A training-only reward: `trl-sgcd eval` and `trl_sgcd.tooluse.evaluation.evaluate` score with the real verifier.
scripted_sibling_reward.eval_reward = airline_reward


__all__ = [
    "airline_expert_script",
    "apply_scripted_sibling",
    "inject_scripted_siblings",
    "render_completion",
    "scripted_rows",
    "scripted_sibling_reward",
]
