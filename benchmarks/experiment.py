"""The paper's experiment on the bundled airline environment: GRPO vs SGCD vs direct_sd vs sdpo, same warm start.

    .venv/bin/python benchmarks/experiment.py --profile quick --seeds 0 1            # CPU, ~8 min per arm and seed
    .venv/bin/python benchmarks/experiment.py --profile full --seeds 0 1 2 --k 4     # ~25 min per arm and seed
    .venv/bin/python benchmarks/experiment.py --model tiny --steps 1 --eval-tasks 2 --sft-steps 1 --sft-tasks 4 \
        --arms off sgcd --seeds 0                                                        # plumbing check, minutes

For each seed, every arm starts from the same cached SFT warm start (`trl_sgcd.tooluse.warmstart`), trains the same number of
steps on the TRAIN tasks with the same settings except `credit_mode`, and is evaluated on the held-out TEST tasks:
greedy pass@1 overall and per category, pass^k (k samples at the training temperature; a task counts only if all k
succeed), and the tool-use audit (zero-tool success share, tools per success, tool failure rate). Nothing is tuned on
the test split. Writes, under --output-dir: `results.json` (every run), `results.md` (mean +- std over seeds), and
`curves.png` (train reward and zero-tool share over steps per arm; action vs information success per arm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARMS = ("off", "sgcd", "direct_sd", "sdpo")
ARM_NAMES = {"off": "GRPO", "sgcd": "SGCD", "direct_sd": "direct SD", "sdpo": "SDPO"}


def run_arm(settings, arm: str, seed: int, output_dir: str, k: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgcd.demo.run import run_demo
    from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset
    from trl_sgcd.tooluse.evaluation import evaluate

    out = os.path.join(output_dir, f"{arm}-seed{seed}")
    t0 = time.perf_counter()
    metrics = run_demo(replace(settings, credit_mode=arm, seed=seed), out, progress=False)
    result = {
        "arm": arm,
        "seed": seed,
        "before": metrics["before"],
        "after": metrics["after"],
        "log_history": metrics["training"]["log_history"],
        "wall_s": metrics["wall_s"],
    }
    if k > 1:  # pass^k of the trained checkpoint at the training temperature
        model = AutoModelForCausalLM.from_pretrained(metrics["checkpoint"])
        tokenizer = AutoTokenizer.from_pretrained(metrics["checkpoint"])
        test = make_airline_dataset("test", seed=seed, n=settings.eval_tasks)
        sampled = evaluate(
            model,
            tokenizer,
            test,
            environment_factory=AirlineEnv,
            reward_func=airline_reward,
            k=k,
            greedy=False,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_turns=settings.eval_max_turns,
            max_new_tokens=settings.eval_max_new_tokens,
            seed=seed,
            progress=False,
        )
        result["pass^k"] = {"k": k, "value": sampled["pass^k"]}
    result["wall_s"]["experiment_total"] = round(time.perf_counter() - t0, 1)
    return result


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def results_table(results: list[dict]) -> str:
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    categories = sorted({c for r in results for c in r["after"]["per_category"]})
    header = [
        "arm",
        "pass@1",
        *[f"{c} pass@1" for c in categories],
        "pass^k",
        "zero-tool share",
        "tools/success",
        "tool failure",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm]
        row = [ARM_NAMES[arm], _mean_std([r["after"]["pass@1"] for r in runs])]
        row += [_mean_std([r["after"]["per_category"].get(c, {}).get("pass@1") for r in runs]) for c in categories]
        row.append(_mean_std([r.get("pass^k", {}).get("value") for r in runs]))
        for key in ("zero_tool_success_share", "tools_per_success", "tool_failure_rate"):
            row.append(_mean_std([r["after"]["audit"].get(key) for r in runs]))
        lines.append("| " + " | ".join(row) + " |")
    before = [r["before"]["pass@1"] for r in results]
    lines.append(f"\nWarm start (before RL), greedy pass@1: {_mean_std(before)}")
    return "\n".join(lines)


def plot_curves(results: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arm in ARMS:
        runs = [r for r in results if r["arm"] == arm]
        if not runs:
            continue
        for key, ax in (("reward", axes[0]), ("sgcd/audit/zero_tool_success_share", axes[1])):
            steps = [e["step"] for e in runs[0]["log_history"] if key in e]
            series = [[e[key] for e in r["log_history"] if key in e] for r in runs]
            n = min(len(s) for s in series)
            if n:
                ax.plot(steps[:n], [statistics.mean(s[i] for s in series) for i in range(n)], label=ARM_NAMES[arm])
    axes[0].set(title="train reward (mean over seeds)", xlabel="step")
    axes[1].set(title="zero-tool share of successes (train)", xlabel="step")
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    for offset, category in ((-0.2, "action"), (0.2, "information")):
        values = [
            statistics.mean(
                r["after"]["per_category"].get(category, {}).get("pass@1", 0.0) for r in results if r["arm"] == a
            )
            for a in arms
        ]
        axes[2].bar([i + offset for i in range(len(arms))], values, width=0.4, label=category)
    axes[2].set_xticks(range(len(arms)), [ARM_NAMES[a] for a in arms])
    axes[2].set(title="held-out success by category", ylim=(0, 1))
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    from trl_sgcd.demo.run import FULL, QUICK

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["quick", "full"], default="quick")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--k", type=int, default=1, help="pass^k samples per test task (1 = greedy only)")
    parser.add_argument("--model", default=None, help="override the base model (bundled, tiny, or a folder)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-tasks", type=int, default=None)
    parser.add_argument("--sft-steps", type=int, default=None, help="cap the warm start's SFT steps")
    parser.add_argument("--sft-tasks", type=int, default=None, help="warm start on the first N train tasks")
    parser.add_argument("--output-dir", default="outputs/experiment")
    args = parser.parse_args(argv)
    settings = QUICK if args.profile == "quick" else FULL
    overrides = {
        k: v
        for k, v in (
            ("model", args.model),
            ("steps", args.steps),
            ("eval_tasks", args.eval_tasks),
            ("sft_steps", args.sft_steps),
            ("sft_tasks", args.sft_tasks),
        )
        if v is not None
    }
    settings = replace(settings, **overrides)
    os.makedirs(args.output_dir, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            print(f"[experiment] seed {seed} arm {arm} ...", flush=True)
            results.append(run_arm(settings, arm, seed, args.output_dir, args.k))
            with open(os.path.join(args.output_dir, "results.json"), "w") as f:
                json.dump({"settings": vars(args), "results": results}, f, indent=1, default=str)
    wall = time.perf_counter() - t0
    table = results_table(results)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    command = "python benchmarks/experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = (
        f"# Experiment results\n\nCommand: `{command}`\n\nMachine: {machine}. Wall time: {wall / 60:.1f} min.\n\n"
        f"{table}\n"
    )
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(report)
    plot_curves(results, os.path.join(args.output_dir, "curves.png"))
    print(report)
    return results


if __name__ == "__main__":
    main()
