"""Scripted (expert) siblings: put one scripted rollout into each group of `num_generations` rollouts.

A weak policy on a real benchmark rarely produces a mixed group (some successes, some failures), and SGCD, like any
group-relative method, learns nothing from a group that is all failures. One remedy is to replace one sibling of each
group by a scripted rollout (e.g. the gold-action expert of `expert.py`), so the group is mixed whenever the policy
fails. TRL has no hook for this; the least invasive place found is right after `GRPOTrainer._generate`, which
returns token ids, tool masks, parsed completions and the environments' end states, before rewards are computed:

```python
# in SGCDTrainer (trainer.py), a few lines:
def _generate(self, prompts):
    output = super()._generate(prompts)
    if self.scripted_sibling is not None:  # e.g. trl_sgcd.envs.tau2.scripted.tau2_expert_script
        output = inject_scripted_siblings(output, prompts=prompts, environments=self.environments,
                                          num_generations=self.num_generations, script=self.scripted_sibling,
                                          tokenizer=self.processing_class, tools=self.tools)
    return output
```

Everything downstream (rewards from the environments, advantages, the credit pipeline, the loss) then treats the
scripted row like any other. What it changes: the row is off-policy; TRL recomputes its old log-probabilities with
the current model (no vLLM sampling log-probabilities exist for it: they are set to 0, which TRL's truncated
importance-sampling correction caps). The token ids are the chat template's rendering of the scripted messages, with
`tool_mask` 0 on tool results, exactly what TRL's own tool loop produces for well-formed turns.
"""

from __future__ import annotations

from collections.abc import Callable


def _render(tokenizer, messages, tools, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def render_completion(tokenizer, prompt: list[dict], completion: list[dict], tools=None) -> tuple[list, list]:
    """
    Token ids and tool mask of a scripted completion, as TRL's tool loop would have produced them.

    Args:
        tokenizer: Tokenizer with a tool chat template.
        prompt (`list[dict]`): The prompt messages (ends with the user message).
        completion (`list[dict]`): Assistant messages (with `tool_calls`) and tool messages, ending with an assistant.
        tools (`list`, *optional*): Tool schemas or callables, as for `apply_chat_template`.

    Returns:
        `(completion_ids, tool_mask)`: ids after the prompt's generation prompt, up to the final end-of-turn token;
        `tool_mask` is 1 on assistant tokens and 0 on tool results and the headers around them.
    """
    prompt_ids = _render(tokenizer, prompt, tools, True)
    start = len(prompt_ids)
    ids: list[int] = []
    mask: list[int] = []
    for k, message in enumerate(completion):
        next_is_assistant = k + 1 < len(completion) and completion[k + 1]["role"] == "assistant"
        full = _render(tokenizer, prompt + completion[: k + 1], tools, next_is_assistant)
        if message["role"] == "assistant":
            eos = [i for i, t in enumerate(full) if t == tokenizer.eos_token_id and i >= start + len(ids)]
            full = full[: eos[0] + 1] if eos else full  # the turn ends at its end-of-turn token, as generated
        segment = full[start + len(ids) :]
        if full[: start + len(ids)] != prompt_ids + ids:
            raise ValueError("the chat template does not render the scripted conversation prefix-preservingly")
        ids += segment
        mask += [1 if message["role"] == "assistant" else 0] * len(segment)
    return ids, mask


def inject_scripted_siblings(
    output: tuple,
    *,
    prompts: list,
    environments: list,
    num_generations: int,
    script: Callable,
    tokenizer,
    tools=None,
) -> tuple:
    """
    Replace the last rollout of each group in `GRPOTrainer._generate`'s output by a scripted one.

    Args:
        output (`tuple`): `(prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images,
            tool_images)` as `_generate` returns it (lists are modified in place and returned).
        prompts (`list`): The prompts of the rows (message lists).
        environments (`list`): The rows' environments; `script(env)` re-runs its episode and returns the completion.
        num_generations (`int`): Group size.
        script (`Callable`): `script(env) -> list[dict]` (e.g. [`tau2_expert_script`]).
        tokenizer: The tokenizer; tools: the tool schemas or callables of the prompts.
    """
    prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest = output
    for row in range(num_generations - 1, len(completion_ids), num_generations):
        completion = script(environments[row])
        ids, mask = render_completion(tokenizer, prompts[row], completion, tools)
        completion_ids[row] = ids
        completions[row] = completion
        if tool_mask is not None:
            tool_mask[row] = mask
        if logprobs is not None:
            logprobs[row] = [0.0] * len(ids)
    return (prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest)


def tau2_expert_script(env) -> list[dict]:
    """Restart `env`'s τ² task on a fresh database and play the gold-action expert (see `expert.py`)."""
    from .expert import expert_completion

    env.reset(task_id=env.task.id)
    return expert_completion(env)
