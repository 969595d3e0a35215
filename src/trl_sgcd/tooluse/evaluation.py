"""Held-out evaluation of a tool-use policy: greedy pass@1, pass^k, per-category success and the tool-use audit.

The rollout loop is the one `GRPOTrainer` runs with an `environment_factory` (one fresh environment per task, `reset`
with the dataset row, tools = the environment's public methods, a raised tool exception becomes `{'error': ...}`, tool
messages `{"role": "tool", "name": ..., "content": str(result)}`, stop when an assistant turn has no tool call or after
`max_turns` generations), with plain `model.generate` instead of vLLM. One departure: each turn re-renders the whole
conversation with the chat template instead of splicing tool-response ids onto the previously generated ids, so the
policy's earlier turns appear in the template's canonical form (for well-formed turns, the same tokens).

The generate step is a function `generate_fn(prompt_ids: list[list[int]]) -> list[list[int]]`, so a test can script the
policy (e.g. replay expert turns) while the parser and the environment stay real. Metrics follow tau-bench (paper
Appendix B): pass@1 is one greedy rollout per task; pass^k counts a task only if all k sampled rollouts succeed.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from trl_sgcd.tooluse.harness import PAPER_HARNESS
from trl_sgcd.tooluse.summary import score_episodes, summarise

GenerateFn = Callable[[list[list[int]]], list[list[int]]]


def environment_tools(env) -> list[Callable]:
    """The tool methods of an environment instance, selected as TRL selects them."""
    members = inspect.getmembers(type(env), predicate=inspect.isfunction)
    return [getattr(env, n) for n, _ in members if n not in ("reset", "get_reward") and not n.startswith("_")]


def render_prompt_ids(tokenizer, messages: list[dict], tools: list | None) -> list[int]:
    """Token ids of a conversation rendered with the chat template and tool schemas, ending with the generation prompt."""
    out = tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def execute_tool_calls(tool_calls: list[dict], tools: dict[str, Callable]) -> list[dict]:
    """Run parsed tool calls like TRL does and return the tool messages; exceptions become `{'error': ...}`."""
    messages = []
    for call in tool_calls:
        function = call.get("function", call)
        name = function.get("name", "unknown")
        try:
            if call.get("type", "function") != "function":
                raise ValueError(f"Unsupported tool call type: {call.get('type')}")
            if name not in tools:
                raise ValueError(f"Tool {name} not found.")
            result = tools[name](**(function.get("arguments") or {}))
        except Exception as e:  # noqa: BLE001 - same contract as GRPOTrainer._tool_call_loop
            result = {"error": str(e)}
        messages.append({"role": "tool", "name": name, "content": str(result)})
    return messages


def _start(row: dict, environment_factory) -> tuple[Any, list[dict]]:
    env = environment_factory()
    observation = env.reset(**row)
    prompt = copy.deepcopy(row["prompt"])
    if isinstance(observation, str):
        prompt[-1] = {**prompt[-1], "content": prompt[-1]["content"] + observation}
    return env, prompt


def run_episodes(
    rows: Sequence[dict],
    *,
    tokenizer,
    generate_fn: GenerateFn,
    environment_factory: Callable[[], Any],
    max_turns: int = PAPER_HARNESS.max_turns,
    max_completion_length: int | None = None,
    batch_size: int = 8,
    progress_bar=None,
) -> list[dict]:
    """Roll out one episode per row, batched; returns `{"row", "env", "prompt", "completion", "num_turns"}` dicts.

    Args:
        rows (`Sequence[dict]`):
            Dataset rows with a conversational `prompt`; every column is passed to `env.reset(**row)`.
        tokenizer:
            Tokenizer with a tool chat template and a response parser (`response_template` / `response_schema`).
        generate_fn (`GenerateFn`):
            Maps a batch of prompt token ids to the completion token ids of each (ending at EOS, or cut short).
        environment_factory (`Callable`):
            Zero-argument callable returning a fresh environment.
        max_turns (`int`, *optional*, defaults to `17`):
            Maximum number of assistant generations per episode; tool calls of the last one are not executed. The
            default is the paper's harness: 16 tool-calling rounds plus the final answer ([`RolloutHarness`]).
        max_completion_length (`int`, *optional*):
            Token budget of the whole episode after the prompt, generated and tool tokens together, as TRL counts it:
            a generation is cut at the budget, and tool results that would overflow it are dropped and end the episode.
            `None`: no budget beyond `generate_fn`'s own per-turn limit.
        batch_size (`int`, *optional*, defaults to `8`):
            Episodes rolled out together.
        progress_bar (*optional*):
            A tqdm bar, advanced by one per finished episode.
    """
    from transformers.utils import get_json_schema
    from trl.chat_template_utils import parse_response

    episodes = []
    for start in range(0, len(rows), batch_size):
        batch = [dict(row) for row in rows[start : start + batch_size]]
        started = [_start(row, environment_factory) for row in batch]
        tools = [environment_tools(env) for env, _ in started]
        schemas = [[get_json_schema(t) for t in ts] for ts in tools]
        completions: list[list[dict]] = [[] for _ in batch]
        turns = [0] * len(batch)
        start_len = [None] * len(batch)  # length of each episode's rendered prompt, to count the budget from
        budget = max_completion_length if max_completion_length is not None else sys.maxsize
        active = list(range(len(batch)))
        for turn in range(max_turns):
            if not active:
                break
            prompt_ids = [render_prompt_ids(tokenizer, started[i][1] + completions[i], schemas[i]) for i in active]
            for i, ids in zip(active, prompt_ids, strict=True):
                start_len[i] = len(ids) if start_len[i] is None else start_len[i]
            outputs = generate_fn(prompt_ids)
            still = []
            for i, ids, prefix in zip(active, outputs, prompt_ids, strict=True):
                left = budget - (len(prefix) - start_len[i])
                message = parse_response(tokenizer, list(ids)[:left], prefix=prefix, tools=schemas[i])
                completions[i].append(message)
                turns[i] += 1
                if message.get("tool_calls") and turn + 1 < max_turns and len(ids) < left:
                    results = execute_tool_calls(message["tool_calls"], {t.__name__: t for t in tools[i]})
                    if max_completion_length is None or _fits(
                        tokenizer, started[i][1] + completions[i] + results, schemas[i], budget + start_len[i]
                    ):
                        completions[i].extend(results)
                        still.append(i)
            active = still
        for row, (env, prompt), completion, n in zip(batch, started, completions, turns, strict=True):
            episodes.append({"row": row, "env": env, "prompt": prompt, "completion": completion, "num_turns": n})
        if progress_bar is not None:
            progress_bar.update(len(batch))
    return episodes


def _fits(tokenizer, messages: list[dict], schemas, max_length: int) -> bool:
    """Whether the conversation, rendered, stays within `max_length` tokens (TRL drops tool results that do not)."""
    return len(render_prompt_ids(tokenizer, messages, schemas)) <= max_length


def generation_settings(model, tokenizer, *, do_sample: bool, temperature: float, top_p: float, max_new_tokens: int):
    """`(GenerationConfig, pad id, set of EOS ids)` for the evaluation's generate functions: stop at the tokenizer's and
    the model's EOS ids, plain temperature / top-p sampling (no top-k) or greedy."""
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = {tokenizer.eos_token_id}
    model_eos = model.generation_config.eos_token_id
    eos_ids |= set(model_eos) if isinstance(model_eos, list) else ({model_eos} if model_eos is not None else set())
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=0 if do_sample else None,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids),
    )
    return config, pad_id, eos_ids


def hf_generate_fn(
    model,
    tokenizer,
    *,
    do_sample: bool = False,
    temperature: float = 0.4,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    seed: int = 0,
) -> GenerateFn:
    """A `GenerateFn` on `model.generate`: left padding, stop at EOS, sampling seeded per call without touching the
    global RNG state (`torch.random.fork_rng`)."""
    import torch

    device = next(model.parameters()).device
    config, pad_id, eos_ids = generation_settings(
        model, tokenizer, do_sample=do_sample, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
    )
    calls = itertools.count()

    def generate(prompt_ids: list[list[int]]) -> list[list[int]]:
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompt_ids], device=device)  # (B, L)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        devices = [device] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed * 1_000_003 + next(calls))
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        completions = []
        for row in out[:, width:].tolist():  # (B, T) new tokens
            end = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))
            completions.append(row[:end])
        return completions

    return generate


def evaluation_reward(reward_func: Callable) -> Callable | None:
    """
    What evaluation scores with in place of `reward_func`: `reward_func` itself, unless it is a training-only reward,
    marked by an `eval_reward` attribute (`trl_sgcd.envs.scripted.scripted_sibling_reward` is one: it labels the first
    rollout of each task a success); then the environment's own verifier that the attribute names, or `None` when it
    names none (the caller must then refuse, or find the environment's verifier itself).
    """
    return getattr(reward_func, "eval_reward", reward_func)


def _reward_name(func: Callable) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def evaluate(
    model,
    tokenizer,
    dataset,
    *,
    environment_factory: Callable[[], Any],
    reward_func: Callable[..., list[float]],
    k: int = 1,
    temperature: float = PAPER_HARNESS.temperature,
    top_p: float = PAPER_HARNESS.top_p,
    greedy: bool = True,
    max_turns: int = PAPER_HARNESS.max_turns,
    max_completion_length: int | None = PAPER_HARNESS.max_completion_length,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    success_threshold: float = 1.0,
    generate_fn: Callable[..., GenerateFn] | None = None,
) -> dict:
    """Evaluate a tool-use policy on a task dataset (multi-turn, one fresh environment per rollout).

    The rollout defaults are the training harness of the paper ([`~trl_sgcd.tooluse.harness.RolloutHarness`]); pass
    `**harness_kwargs(RolloutHarness.from_training_args(config))` to evaluate under a training run's own harness.

    Args:
        model (`PreTrainedModel` or `None`):
            Causal LM to evaluate (put in eval mode for the run). May be `None` when `generate_fn` is given.
        tokenizer:
            Its tokenizer, with a tool chat template; a response parser is attached with
            `trl.chat_template_utils.add_response_schema` if it has none.
        dataset (`datasets.Dataset` or `list[dict]`):
            Rows with a conversational `prompt`, the columns `reset` needs (e.g. `task_id`), and optionally `category`.
        environment_factory (`Callable`):
            Zero-argument environment constructor, e.g. `AirlineEnv`.
        reward_func (`Callable`):
            TRL-style reward function, called with `prompts`, `completions`, `environments` and the row columns. A
            training-only reward ([`evaluation_reward`]) is replaced by the verifier it names, with a warning, or
            refused (`ValueError`) when it names none.
        k (`int`, *optional*, defaults to `1`):
            Sampled rollouts per task for pass^k (a task counts only if all `k` succeed). With `k=1`, pass^k = pass@1.
        temperature (`float`, *optional*, defaults to `0.4`), top_p (`float`, *optional*, defaults to `0.95`):
            Sampling settings of the pass^k rollouts (the paper's tau3-airline validation settings).
        greedy (`bool`, *optional*, defaults to `True`):
            pass@1 from one greedy rollout per task. If `False`, pass@1 is the mean success of the sampled rollouts.
        max_turns (`int`, *optional*, defaults to `17`):
            Maximum assistant generations per rollout (16 tool-calling rounds plus the answer, as in training).
        max_completion_length (`int` or `None`, *optional*, defaults to `16384`):
            Token budget of each whole rollout after the prompt (generated and tool tokens), as in training.
        max_new_tokens (`int` or `None`, *optional*, defaults to `None`):
            Cap on each single generation; `None` uses `max_completion_length` (training has no per-turn cap).
        batch_size (`int`, *optional*, defaults to `8`):
            Rollouts generated together (left padding).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampled rollouts.
        progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar over episodes.
        success_threshold (`float`, *optional*, defaults to `1.0`):
            A rollout succeeds when its reward is at least this.
        generate_fn (`Callable`, *optional*):
            Replaces `model.generate`: called as `generate_fn(do_sample=..., seed=...)` and must return a `GenerateFn`.

    Returns:
        `dict`: `pass@1`, `pass^k`, `k`, `num_tasks`, `per_category` (`{category: {"pass@1", "pass^k", "num_tasks"}}`),
        `audit` (`tool_use_audit` of the primary rollouts: the greedy ones, else the first sampled ones) and `records`
        (one dict per task: reward, success, sample rewards, tool calls and errors, turns, final answer, messages).
    """
    verifier = evaluation_reward(reward_func)
    if verifier is None:
        raise ValueError(
            f"reward_func {_reward_name(reward_func)} is a training-only reward and names no verifier: evaluate with "
            "the environment's own reward."
        )
    if verifier is not reward_func:
        warnings.warn(
            f"reward_func {_reward_name(reward_func)} is a training-only reward; scoring with the environment's "
            f"verifier {_reward_name(verifier)} instead.",
            UserWarning,
            stacklevel=2,
        )
        reward_func = verifier
    rows = _prepare(tokenizer, dataset, k)
    runs = _plan_runs(k, greedy, seed)
    if max_new_tokens is None:
        max_new_tokens = max_completion_length or PAPER_HARNESS.max_completion_length

    def make_fn(do_sample: bool, run_seed: int) -> GenerateFn:
        if generate_fn is not None:
            return generate_fn(do_sample=do_sample, seed=run_seed)
        return hf_generate_fn(
            model,
            tokenizer,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=run_seed,
        )

    rollout = dict(max_turns=max_turns, max_completion_length=max_completion_length, batch_size=batch_size)
    results = _roll_out(model, tokenizer, rows, runs, make_fn, environment_factory, reward_func, rollout, progress)
    primary, primary_rewards = results[0]
    samples = [rewards for _, rewards in results[1:]] if greedy else [rewards for _, rewards in results]
    summary = summarise(rows, primary, primary_rewards, samples, greedy, success_threshold)
    return {"k": k, "num_tasks": len(rows)} | summary


def harness_kwargs(harness) -> dict:
    """The [`evaluate`] keyword arguments of a [`~trl_sgcd.tooluse.harness.RolloutHarness`]."""
    return dict(
        max_turns=harness.max_turns,
        max_completion_length=harness.max_completion_length,
        temperature=harness.temperature,
        top_p=harness.top_p,
    )


def _prepare(tokenizer, dataset, k: int) -> list[dict]:
    """Phase 1: check the arguments, attach the response parser, materialise the rows."""
    from trl.chat_template_utils import add_response_schema

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        add_response_schema(tokenizer)
    rows = [dict(row) for row in dataset]
    if not rows:
        raise ValueError("evaluate needs at least one task")
    return rows


def _plan_runs(k: int, greedy: bool, seed: int) -> list[tuple[str, bool, int]]:
    """Phase 2: the rollout passes, `(name, do_sample, seed)`: one greedy pass (if `greedy`), then the sampled ones."""
    num_sampled = k if (k > 1 or not greedy) else 0
    return [("greedy", False, seed)] * greedy + [(f"sample {s}", True, seed + s) for s in range(num_sampled)]


def _roll_out(model, tokenizer, rows, runs, make_fn, environment_factory, reward_func, rollout: dict, progress: bool):
    """Phase 3: every pass over every row, in eval mode, scored. Returns `[(episodes, rewards)]`, one per pass."""
    from tqdm.auto import tqdm

    was_training = getattr(model, "training", False)
    if model is not None:
        model.eval()
    bar = tqdm(total=len(rows) * len(runs), desc="evaluate", unit="episode", disable=not progress)
    results = []
    try:
        for _, do_sample, run_seed in runs:
            episodes = run_episodes(
                rows,
                tokenizer=tokenizer,
                generate_fn=make_fn(do_sample, run_seed),
                environment_factory=environment_factory,
                progress_bar=bar,
                **rollout,
            )
            results.append((episodes, score_episodes(episodes, reward_func)))
    finally:
        bar.close()
        if model is not None and was_training:
            model.train()
    return results
