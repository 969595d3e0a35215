"""τ²-airline numbers for docs/tau2.md: prompt length in SmolLM2 tokens, the scripted-expert and no-op scores on the
test split (τ²'s own evaluation), and the CPU time of one τ² evaluation (reward) per rollout.

    OMP_NUM_THREADS=1 python benchmarks/bench_tau2.py            # full test split
    OMP_NUM_THREADS=1 python benchmarks/bench_tau2.py --quick    # 4 tasks
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--domain", default="airline")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from trl_sgcd.envs.tau2 import resolve
    from trl_sgcd.envs.tau2.env import tool_names
    from trl_sgcd.envs.tau2.expert import expert_completion, summarise
    from trl_sgcd.envs.tau2.reward import skipped_judge_checks, tau2_reward
    from trl_sgcd.tooluse.models import bundled_model_dir

    spec = resolve(f"tau2:{args.domain}")
    rows = list(spec.dataset("test", n=4 if args.quick else None))
    env_class = spec.environment_factory
    tools = [getattr(env_class(), n) for n in tool_names(env_class)]
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    lengths = [
        len(
            tokenizer.apply_chat_template(r["prompt"], tools=tools, add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )
        for r in rows
    ]
    system_tokens = len(tokenizer(rows[0]["prompt"][0]["content"])["input_ids"])
    records = {"expert": [], "noop": []}
    seconds = []
    for row in rows:
        for policy in records:
            env = env_class()
            env.reset(task_id=row["task_id"])
            completion = expert_completion(env) if policy == "expert" else [{"role": "assistant", "content": "No."}]
            start = time.perf_counter()
            reward = tau2_reward([completion], [env], [row["prompt"]])[0]
            seconds.append(time.perf_counter() - start)
            records[policy].append({"category": row["category"], "reward": reward})
    result = {
        "tasks": len(rows),
        "prompt_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "system_prompt_tokens": system_tokens,
        "expert": {k: v for k, v in summarise(records["expert"]).items() if k != "records"},
        "noop": {k: v for k, v in summarise(records["noop"]).items() if k != "records"},
        "reward_seconds_per_rollout_median": statistics.median(seconds),
        "judge": skipped_judge_checks(args.domain, [r["task_id"] for r in rows]),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
