"""Sampling and caching the rollouts that `bench_credit.py` scores (sibling groups of airline TRAIN tasks).

Each group is `k` rollouts of one train task sampled from the policy at the training temperature, with the
evaluation's rollout loop (`trl_sgcd.tooluse.evaluation.run_episodes`, the loop `GRPOTrainer` runs with an
`environment_factory`) and its prefix-cached generation. A rollout is stored in TRL's layout: the clean prompt ids,
then the completion ids (every assistant turn followed by its tool observations) with `tool_mask` = 1 on the
generated turns. The completion ids are the chat template's rendering of the sampled conversation: what the policy
conditioned on in its later turns (TRL keeps the sampled ids verbatim; for well-formed turns they are the same).

Chunks of tasks are written one file each as soon as they are sampled, so a killed run resumes where it stopped.
`expert_siblings` replaces the last rollouts of every group by the task's expert trajectory (a scripted sibling that
succeeds, so that even a random model gives mixed groups: the smoke test uses it; the benchmark does not).
"""

from __future__ import annotations

import hashlib
import json
import os
import time


def completion_layout(tokenizer, prompt: list[dict], completion: list[dict], tools: list) -> tuple[list, list, list]:
    """`(prompt_ids, completion_ids, tool_mask)` of a conversation in TRL's layout (see the module docstring)."""
    prompt_ids = tokenizer.apply_chat_template(
        prompt, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    full = tokenizer.apply_chat_template(prompt + completion, tools=tools, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    if list(full[: len(prompt_ids)]) != list(prompt_ids):
        raise ValueError("the chat template does not preserve the prompt prefix")
    ids = list(full[len(prompt_ids) :])
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    opener = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    last_end = max((i for i, t in enumerate(ids) if t == end_id), default=len(ids) - 1)
    ids = ids[: last_end + 1]  # the completion stops at the last end-of-turn token, as a sampled one does
    mask, generating = [0] * len(ids), True
    i = 0
    while i < len(ids):
        if generating:
            mask[i] = 1
            generating = ids[i] != end_id
            i += 1
        elif ids[i : i + len(opener)] == opener:
            i += len(opener)
            generating = True
        else:
            i += 1
    return list(prompt_ids), ids, mask


def rollout_key(settings: dict) -> str:
    """Cache folder name of the sampling settings. The number of tasks is not in it: chunk `c` holds the same tasks
    and seeds whatever the total, so a larger run extends a smaller one and a smaller one reuses its first chunks."""
    kept = {k: v for k, v in settings.items() if k != "n_tasks"}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]
    return f"{settings['policy_name']}-k{settings['k']}-{digest}"


def _chunk_rollouts(rows, episodes, rewards, tokenizer, schemas, chunk: int) -> list[dict]:
    out = []
    for j, (row, episode, reward) in enumerate(zip(rows, episodes, rewards, strict=True)):
        prompt_ids, completion_ids, tool_mask = completion_layout(
            tokenizer, episode["prompt"], episode["completion"], schemas
        )
        out.append(
            {
                "task_id": row["task_id"],
                "seed": row["seed"],
                "category": row["category"],
                "chunk": chunk,
                "index_in_chunk": j,
                "reward": float(reward),
                "prompt": episode["prompt"],
                "completion": episode["completion"],
                "gold_actions": row["gold_actions"],
                "gold_answer": row["gold_answer"],
                "prompt_ids": prompt_ids,
                "completion_ids": completion_ids,
                "tool_mask": tool_mask,
            }
        )
    return out


def _expert_episode(row):
    from trl_sgcd.envs.airline import AirlineEnv
    from trl_sgcd.envs.airline_tasks import get_task
    from trl_sgcd.tooluse.expert import expert_conversation

    conversation = expert_conversation(get_task(row["task_id"], seed=row["seed"]))
    env = AirlineEnv(row["seed"])
    env.reset(task_id=row["task_id"], seed=row["seed"])
    for message in conversation[2:]:
        for call in message.get("tool_calls") or []:
            getattr(env, call["function"]["name"])(**call["function"]["arguments"])
    return {"row": row, "env": env, "prompt": conversation[:2], "completion": conversation[2:], "num_turns": 0}


def sample_rollouts(
    model,
    tokenizer,
    *,
    folder: str,
    n_tasks: int,
    k: int,
    temperature: float,
    top_p: float,
    max_turns: int,
    max_new_tokens: int,
    tasks_per_chunk: int = 4,
    seed: int = 0,
    expert_siblings: int = 0,
    progress: bool = True,
    bf16: bool = False,
) -> list[dict]:
    """Sample (or load) `k` rollouts of each of the first `n_tasks` train tasks; returns them in group order."""
    from transformers.utils import get_json_schema
    from trl.chat_template_utils import add_response_schema

    from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset
    from trl_sgcd.tooluse.evaluation import environment_tools, run_episodes
    from trl_sgcd.tooluse.prefix_cache import prefix_cached_generate_fn, shared_prefix

    if getattr(tokenizer, "response_schema", None) is None and getattr(tokenizer, "response_template", None) is None:
        add_response_schema(tokenizer)
    os.makedirs(folder, exist_ok=True)
    dataset = [dict(r) for r in make_airline_dataset("train", seed=seed, n=n_tasks)]
    schemas = [get_json_schema(t) for t in environment_tools(AirlineEnv())]
    factory = None
    rollouts = []
    for chunk, start in enumerate(range(0, len(dataset), tasks_per_chunk)):  # chunk c: tasks [c*C, (c+1)*C)
        path = os.path.join(folder, f"chunk_{chunk:04d}.json")
        tasks = dataset[start : start + tasks_per_chunk]
        if os.path.exists(path):
            wanted = {t["task_id"] for t in tasks}
            with open(path) as f:
                cached = [r for r in json.load(f) if r["task_id"] in wanted]
            if {r["task_id"] for r in cached} == wanted:  # else a smaller run wrote a shorter last chunk: resample
                rollouts.extend(cached)
                continue
        if factory is None:
            model.eval()
            factory = prefix_cached_generate_fn(
                model,
                tokenizer,
                shared_prefix(tokenizer, dataset),
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                bf16=bf16,
            )
        t0 = time.perf_counter()
        sampled = k - expert_siblings
        rows = [row for row in tasks for _ in range(sampled)]
        episodes = []
        if sampled > 0:
            episodes = run_episodes(
                rows,
                tokenizer=tokenizer,
                generate_fn=factory(do_sample=True, seed=seed * 100_003 + chunk),
                environment_factory=AirlineEnv,
                max_turns=max_turns,
                batch_size=len(rows),
            )
        grouped = []
        for g, task in enumerate(tasks):
            grouped += episodes[g * sampled : (g + 1) * sampled] + [_expert_episode(task)] * expert_siblings
        rewards = airline_reward([e["completion"] for e in grouped], environments=[e["env"] for e in grouped])
        rows = [e["row"] for e in grouped]
        records = _chunk_rollouts(rows, grouped, rewards, tokenizer, schemas, chunk)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(records, f)
        os.replace(tmp, path)  # a chunk file exists only when complete
        rollouts.extend(records)
        if progress:
            wins = [sum(r["reward"] >= 1 for r in records[g * k : (g + 1) * k]) for g in range(len(tasks))]
            print(
                f"[sample] chunk {chunk}: {len(tasks)} tasks x {k}, successes per group {wins}, "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    return rollouts


def literal_mask_audit(tokenizer, *, seed: int = 0) -> dict:
    """How much of a success's decisive tokens the literal mask leaves eligible, on the expert trajectories of every
    train task (no model): the decisive tokens of a success are its write arguments, and those are gold values,
    which the sanitizer masks wherever they occur in the sibling evidence (so in every mixed group); the trainer's
    literal rule then unmasks the values the student sees (its prompt, earlier tool observations)."""
    import torch
    from transformers.utils import get_json_schema

    from trl_sgcd.credit.reference.sanitize import Sanitizer
    from trl_sgcd.credit.scoring.teacher import literal_token_mask
    from trl_sgcd.envs.airline import AirlineEnv, make_airline_dataset, tool_names
    from trl_sgcd.envs.airline_tasks import get_task
    from trl_sgcd.envs.decisive import decisive_token_mask
    from trl_sgcd.tooluse.evaluation import environment_tools
    from trl_sgcd.tooluse.expert import expert_conversation

    schemas = [get_json_schema(t) for t in environment_tools(AirlineEnv())]
    decisive_total = eligible_total = rollouts = 0
    for row in make_airline_dataset("train", seed=seed):
        task = get_task(row["task_id"], seed=seed)
        conversation = expert_conversation(task)
        prompt, ids, tool_mask = completion_layout(tokenizer, conversation[:2], conversation[2:], schemas)
        decisive = decisive_token_mask(task, ids, tool_mask, tokenizer, success=True)
        if not any(decisive):
            continue
        private = Sanitizer([row["gold_actions"], row["gold_answer"]], keep=tool_names()).private_values
        # the trainer's rule: a value in the clean prompt or in an earlier tool observation stays eligible
        literal = literal_token_mask(
            torch.tensor([ids]), [private], tokenizer, prompt_ids=[prompt], tool_mask=torch.tensor([tool_mask])
        )[0].tolist()
        rollouts += 1
        decisive_total += sum(decisive)
        eligible_total += sum(d and m and not lit for d, m, lit in zip(decisive, tool_mask, literal))
    return {
        "rollouts": rollouts,
        "decisive_tokens": decisive_total,
        "eligible_share": eligible_total / max(1, decisive_total),
    }
