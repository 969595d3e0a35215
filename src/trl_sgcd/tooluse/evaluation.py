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
from collections.abc import Callable, Sequence
from typing import Any

from trl_sgcd.tooluse.audit import count_tool_calls, count_tool_errors, tool_use_audit

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
    max_turns: int = 8,
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
        max_turns (`int`, *optional*, defaults to `8`):
            Maximum number of assistant generations per episode; tool calls of the last one are not executed.
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
        active = list(range(len(batch)))
        for turn in range(max_turns):
            if not active:
                break
            prompt_ids = [render_prompt_ids(tokenizer, started[i][1] + completions[i], schemas[i]) for i in active]
            outputs = generate_fn(prompt_ids)
            still = []
            for i, ids, prefix in zip(active, outputs, prompt_ids, strict=True):
                message = parse_response(tokenizer, list(ids), prefix=prefix, tools=schemas[i])
                completions[i].append(message)
                turns[i] += 1
                if message.get("tool_calls") and turn + 1 < max_turns:
                    completions[i].extend(execute_tool_calls(message["tool_calls"], {t.__name__: t for t in tools[i]}))
                    still.append(i)
            active = still
        for row, (env, prompt), completion, n in zip(batch, started, completions, turns, strict=True):
            episodes.append({"row": row, "env": env, "prompt": prompt, "completion": completion, "num_turns": n})
        if progress_bar is not None:
            progress_bar.update(len(batch))
    return episodes


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


def _score(episodes: list[dict], reward_func: Callable) -> list[float]:
    rows = [e["row"] for e in episodes]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
    rewards = reward_func(
        prompts=[e["prompt"] for e in episodes],
        completions=[e["completion"] for e in episodes],
        environments=[e["env"] for e in episodes],
        **columns,
    )
    return [float("nan") if r is None else float(r) for r in rewards]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _summarise(rows, primary: list[dict], primary_rewards, samples: list[list[float]], greedy: bool, threshold: float):
    """Metrics and per-task records. pass@1 per task: the greedy success, else the mean success of the samples."""
    categories = [r.get("category", "all") for r in rows]
    success = [r >= threshold for r in primary_rewards]  # NaN compares False: a failure
    sampled = [[s[i] >= threshold for s in samples] for i in range(len(rows))]
    pass1 = [float(ok) if greedy else _mean(s) for ok, s in zip(success, sampled)]
    all_k = [all(s) if s else ok for s, ok in zip(sampled, success)]
    per_category = {}
    for category in sorted(set(categories)):
        idx = [i for i, c in enumerate(categories) if c == category]
        per_category[category] = {
            "pass@1": _mean(pass1[i] for i in idx),
            "pass^k": _mean(all_k[i] for i in idx),
            "num_tasks": len(idx),
        }
    records = []
    for i, (row, episode) in enumerate(zip(rows, primary)):
        completion = episode["completion"]
        answers = [m.get("content", "") for m in completion if m["role"] == "assistant"]
        records.append(
            {
                "task_id": row.get("task_id"),
                "category": categories[i],
                "reward": primary_rewards[i],
                "success": success[i],
                "sample_rewards": [s[i] for s in samples],
                "num_tool_calls": count_tool_calls(completion),
                "num_tool_errors": count_tool_errors(completion),
                "num_turns": episode["num_turns"],
                "final_answer": answers[-1] if answers else "",
                "completion": completion,
            }
        )
    completions = [e["completion"] for e in primary]
    audit = tool_use_audit(completions, primary_rewards, categories, success_threshold=threshold)
    return {
        "pass@1": _mean(pass1),
        "pass^k": _mean(all_k),
        "per_category": per_category,
        "audit": audit,
        "records": records,
    }


def evaluate(
    model,
    tokenizer,
    dataset,
    *,
    environment_factory: Callable[[], Any],
    reward_func: Callable[..., list[float]],
    k: int = 1,
    temperature: float = 0.4,
    top_p: float = 0.95,
    greedy: bool = True,
    max_turns: int = 8,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    success_threshold: float = 1.0,
    generate_fn: Callable[..., GenerateFn] | None = None,
) -> dict:
    """Evaluate a tool-use policy on a task dataset (multi-turn, one fresh environment per rollout).

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
            TRL-style reward function, called with `prompts`, `completions`, `environments` and the row columns.
        k (`int`, *optional*, defaults to `1`):
            Sampled rollouts per task for pass^k (a task counts only if all `k` succeed). With `k=1`, pass^k = pass@1.
        temperature (`float`, *optional*, defaults to `0.4`), top_p (`float`, *optional*, defaults to `0.95`):
            Sampling settings of the pass^k rollouts (the paper's tau3-airline validation settings).
        greedy (`bool`, *optional*, defaults to `True`):
            pass@1 from one greedy rollout per task. If `False`, pass@1 is the mean success of the sampled rollouts.
        max_turns (`int`, *optional*, defaults to `8`):
            Maximum assistant generations per rollout.
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Token budget of each generation.
        batch_size (`int`, *optional*, defaults to `8`):
            Rollouts generated together (left padding).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampled rollouts.
        progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar.
        success_threshold (`float`, *optional*, defaults to `1.0`):
            A rollout succeeds when its reward is at least this.
        generate_fn (`Callable`, *optional*):
            Replaces `model.generate`: called as `generate_fn(do_sample=..., seed=...)` and must return a `GenerateFn`.

    Returns:
        `dict`: `pass@1`, `pass^k`, `k`, `num_tasks`, `per_category` (`{category: {"pass@1", "pass^k", "num_tasks"}}`),
        `audit` (`tool_use_audit` of the primary rollouts: the greedy ones, else the first sampled ones) and `records`
        (one dict per task: reward, success, sample rewards, tool calls and errors, turns, final answer, messages).
    """
    from tqdm.auto import tqdm
    from trl.chat_template_utils import add_response_schema

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        add_response_schema(tokenizer)
    rows = [dict(row) for row in dataset]
    if not rows:
        raise ValueError("evaluate needs at least one task")
    num_sampled = k if (k > 1 or not greedy) else 0
    runs = [("greedy", False, seed)] * greedy + [(f"sample {s}", True, seed + s) for s in range(num_sampled)]

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

    was_training = getattr(model, "training", False)
    if model is not None:
        model.eval()
    bar = tqdm(total=len(rows) * len(runs), desc="evaluate", disable=not progress)
    results = []
    try:
        for _, do_sample, run_seed in runs:
            episodes = run_episodes(
                rows,
                tokenizer=tokenizer,
                generate_fn=make_fn(do_sample, run_seed),
                environment_factory=environment_factory,
                max_turns=max_turns,
                batch_size=batch_size,
                progress_bar=bar,
            )
            results.append((episodes, _score(episodes, reward_func)))
    finally:
        bar.close()
        if model is not None and was_training:
            model.train()
    primary, primary_rewards = results[0]
    samples = [rewards for _, rewards in results[1:]] if greedy else [rewards for _, rewards in results]
    summary = _summarise(rows, primary, primary_rewards, samples, greedy, success_threshold)
    return {"k": k, "num_tasks": len(rows)} | summary


# --- `trl-sgcd eval` ----------------------------------------------------------------------------------------------


def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="trl-sgcd eval", description="Evaluate a checkpoint on the airline tasks.")
    p.add_argument("--model", default="bundled", help='Checkpoint folder, or "bundled" (SmolLM2-135M) / "tiny".')
    p.add_argument("--split", default="test", help='Task split: "test" (held out, default) or "train".')
    p.add_argument("--n", type=int, default=None, help="Evaluate only the first n tasks.")
    p.add_argument("--k", type=int, default=1, help="Sampled rollouts per task for pass^k.")
    p.add_argument("--temperature", type=float, default=0.4)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--no_greedy", action="store_true", help="pass@1 from the sampled rollouts instead of greedy.")
    p.add_argument("--max_turns", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="Seed of the tasks and of the sampled rollouts.")
    p.add_argument("--output", default=None, help="Write metrics and per-task records to this JSON file.")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """`trl-sgcd eval`: pass@1 / pass^k per category and the tool-use audit of a checkpoint on the airline tasks."""
    import json
    import sys

    args = _parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import supports_tool_calling

    from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset
    from trl_sgcd.tooluse.models import bundled_model_dir, tiny_model_dir

    path = {"bundled": bundled_model_dir, "tiny": tiny_model_dir}.get(args.model, lambda: args.model)()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not supports_tool_calling(tokenizer):
        print(f"trl-sgcd eval: the chat template of {path} cannot render tool calls.", file=sys.stderr)
        return 2
    model = AutoModelForCausalLM.from_pretrained(path)
    dataset = make_airline_dataset(args.split, seed=args.seed, n=args.n)
    result = evaluate(
        model,
        tokenizer,
        dataset,
        environment_factory=AirlineEnv,
        reward_func=airline_reward,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        greedy=not args.no_greedy,
        max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"pass@1 {result['pass@1']:.3f}   pass^{args.k} {result['pass^k']:.3f}   ({result['num_tasks']} tasks)")
    for category, m in result["per_category"].items():
        print(f"  {category:<12} pass@1 {m['pass@1']:.3f}   pass^k {m['pass^k']:.3f}   n={m['num_tasks']}")
    audit = result["audit"]
    print(
        f"  zero-tool success share {audit['zero_tool_success_share']:.3f}   tools/success "
        f"{audit['tools_per_success']:.2f}   tool failure rate {audit['tool_failure_rate']:.3f}"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0
