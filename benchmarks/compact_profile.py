"""Size the compact airline profile by measurement: its prompt tokens, and train-task success after the warm start.

    .venv/bin/python benchmarks/compact_profile.py                      # warm start (cached) + sampled train success
    .venv/bin/python benchmarks/compact_profile.py --sft-steps 12 --out docs/data/compact_profile.json

The experiment needs mixed groups: after the cached warm start, sampled success on TRAIN tasks at the training
temperature should sit between 30% and 70% (issue 21). This script builds the compact warm start with the settings of
`benchmarks/experiment.py --profile cpu-compact` (or the ones given), measures the prompt sizes with the model's
tokenizer, and the sampled success (k samples per task at `--temperature`) on the first `--tasks` TRAIN tasks, per
category, with the share of tasks whose k samples are mixed. Never touches the TEST tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prompt_sizes(tokenizer, profile: str) -> dict:
    """System text, tool schemas (as JSON lines) and whole rendered prompts, in tokens of `tokenizer`."""
    from trl_sgcd.envs.airline import airline_prompt, airline_tool_schemas
    from trl_sgcd.envs.airline_tasks import airline_tasks

    tasks = airline_tasks("train", profile=profile)
    schemas = airline_tool_schemas(profile)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    rendered = sorted(
        count(
            tokenizer.apply_chat_template(airline_prompt(t), tools=schemas, tokenize=False, add_generation_prompt=True)
        )
        for t in tasks
    )
    return {
        "system_text": count(airline_prompt(tasks[0])[0]["content"]),
        "tool_schemas": count("\n".join(json.dumps(s) for s in schemas)),
        "tools": len(schemas),
        "prompt_median": rendered[len(rendered) // 2],
        "prompt_max": rendered[-1],
    }


def main(argv=None) -> dict:
    from dataclasses import replace

    from benchmarks.experiment import PROFILES, warm_start_kwargs

    s = PROFILES["cpu-compact"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft-steps", type=int, default=s.sft_steps)
    p.add_argument("--sft-tasks", type=int, default=s.sft_tasks)
    p.add_argument("--sft-learning-rate", type=float, default=s.sft_learning_rate)
    p.add_argument("--tasks", type=int, default=32, help="first N TRAIN tasks to sample")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--temperature", type=float, default=s.temperature)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    from transformers import AutoTokenizer

    from trl_sgcd.tooluse.warmstart import train_success, warm_start

    t0 = time.perf_counter()
    sized = replace(s, sft_learning_rate=a.sft_learning_rate, sft_tasks=a.sft_tasks, sft_steps=a.sft_steps)
    ws = warm_start(progress=True, **warm_start_kwargs(sized))
    t1 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(ws)
    sizes = {"compact": prompt_sizes(tokenizer, "compact"), "full": prompt_sizes(tokenizer, "full")}
    print(json.dumps(sizes), flush=True)
    success = train_success(
        ws, n_tasks=a.tasks, k=a.k, temperature=a.temperature, top_p=s.top_p, max_turns=s.eval_max_turns,
        max_new_tokens=s.eval_max_new_tokens, seed=s.task_seed, progress=False, precision=s.precision,
        profile="compact",
    )  # fmt: skip
    result = {
        "warm_start": ws,
        "sft_steps": a.sft_steps,
        "sft_tasks": a.sft_tasks,
        "sft_learning_rate": a.sft_learning_rate,
        "prompt_tokens": sizes,
        "train_success": success,
        "wall_s": {"warm_start": round(t1 - t0, 1), "train_success": round(time.perf_counter() - t1, 1)},
    }
    print(json.dumps(result, indent=1, default=str), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return result


if __name__ == "__main__":
    main()
