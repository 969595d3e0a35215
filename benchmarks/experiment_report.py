"""The results file of `benchmarks/experiment.py` (one JSON line per finished run) and what is built from it.

    .venv/bin/python benchmarks/experiment_report.py outputs/experiment      # rebuild results.md and curves.png
                                                                             # (+ a line per unfinished run)

Intervals: 95% bootstrap over seeds and held-out tasks together (seeds and tasks resampled with replacement, the same
draw for every arm, so the SGCD - GRPO difference is paired by seed and task). With few seeds the interval is mostly the
task noise of one evaluation; it is printed next to the number of runs it rests on.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys

ARMS = ("off", "sgcd", "uniform", "no_reference", "direct_sd", "sdpo")
RESULTS_FILE = "results.jsonl"
ARM_NAMES = {
    "off": "GRPO",
    "sgcd": "SGCD",
    "uniform": "uniform W",
    "no_reference": "no reference",
    "direct_sd": "direct SD",
    "sdpo": "SDPO",
}
THRESHOLD = 0.6
"""Train reward a run must reach (10-step moving average) for "steps to threshold"; fixed before any run."""
WINDOW = 10


def read_results(path: str) -> list[dict]:
    """Finished runs, in the order they ended. A torn last line (a process killed mid-write) is dropped: rerun."""
    if not os.path.exists(path):
        return []
    results = []
    with open(path) as f:
        for line in f:
            try:
                results.append(json.loads(line))
            except ValueError:
                continue
    return results


def append_result(path: str, result: dict) -> None:
    """Append one run as one JSON line, flushed to disk before returning."""
    with open(path, "a+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():  # a torn last line must not swallow this one
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                f.write("\n")
        f.write(json.dumps(result, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _success_table(results: list[dict], arm: str) -> dict[int, dict[str, bool]]:
    return {r["seed"]: r["after"]["task_success"] for r in results if r["arm"] == arm}


def bootstrap_interval(
    tables: list[dict[int, dict[str, bool]]], weights: list[float], *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(estimate, low, high) of sum_i weights[i] * pass@1(tables[i]), resampling seeds and tasks (paired).

    Each table maps seed -> task_id -> success; only seeds and tasks present in every table are used.
    """
    seeds = sorted(set.intersection(*(set(t) for t in tables)))
    tasks = sorted(set.intersection(*(set(t[s]) for t in tables for s in seeds))) if seeds else []
    if not seeds or not tasks:
        return float("nan"), float("nan"), float("nan")

    def stat(ss, ts):
        return sum(w * statistics.mean(float(t[s][k]) for s in ss for k in ts) for t, w in zip(tables, weights))

    rng = random.Random(seed)
    draws = sorted(
        stat(rng.choices(seeds, k=len(seeds)), rng.choices(tasks, k=len(tasks))) for _ in range(n_boot)
    )  # fmt: skip
    return stat(seeds, tasks), draws[int(0.025 * n_boot)], draws[int(0.975 * n_boot) - 1]


def _fmt(estimate, low, high) -> str:
    return "n/a" if estimate != estimate else f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.3f}" if values else "n/a"


def _series(runs: list[dict], key: str) -> list[float]:
    """Mean over runs of a logged training metric, step by step (as long as every run has it)."""
    series = [[e[key] for e in r["log_history"] if key in e] for r in runs]
    n = min((len(s) for s in series), default=0)
    return [statistics.mean(s[i] for s in series) for i in range(n)]


def step_series(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, mean over the runs that logged `key` at that step): metrics logged only on some steps stay aligned."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for entry in run["log_history"]:
            if key in entry and "step" in entry:
                by_step.setdefault(int(entry["step"]), []).append(entry[key])
    steps = sorted(by_step)
    return steps, [statistics.mean(by_step[t]) for t in steps]


def moving_average(values: list[float], window: int = WINDOW) -> list[float]:
    return [statistics.mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def learning_speed(run: dict, key: str = "reward") -> tuple[float, int | None]:
    """(area under the train-reward curve per step, first step whose moving average reaches `THRESHOLD` or None)."""
    values = [e[key] for e in run["log_history"] if key in e]
    if not values:
        return float("nan"), None
    smooth = moving_average(values)
    reached = next((i + 1 for i, v in enumerate(smooth) if v >= THRESHOLD), None)
    return statistics.mean(values), reached


def _median_logged(runs: list[dict], key: str) -> str:
    values = [e[key] for r in runs for e in r["log_history"] if key in e]
    return f"{statistics.median(values):.2f}" if values else "n/a"


def _spread(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    text = f"{statistics.mean(values):.3f}"
    return text + (f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else "")


def learning_table(results: list[dict]) -> str:
    """Learning speed on the train tasks, the end-of-run action success, and where credit landed over the run."""
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    header = [
        "arm",
        "train reward AUC (seed range)",
        f"steps to {THRESHOLD} (per seed)",
        "held-out action pass@1",
        "credit lift (median over steps)",
        "W > 1 share (median)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        speeds = [learning_speed(r) for r in runs]
        action = [r["after"]["per_category"].get("action", {}).get("pass@1", float("nan")) for r in runs]
        row = [
            ARM_NAMES[arm],
            _spread([auc for auc, _ in speeds]),
            ", ".join("never" if s is None else str(s) for _, s in speeds),
            _spread(action),
            _median_logged(runs, "sgcd/localization/lift"),
            _median_logged(runs, "sgcd/localization/credit_share"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    paired = []
    for arm in arms:
        if arm == "off":
            continue
        by_seed = {r["seed"]: learning_speed(r)[0] for r in results if r["arm"] == arm}
        base = {r["seed"]: learning_speed(r)[0] for r in results if r["arm"] == "off"}
        diffs = [by_seed[k] - base[k] for k in sorted(set(by_seed) & set(base))]
        if diffs:
            paired.append(
                f"Paired {ARM_NAMES[arm]} - GRPO train-reward AUC, per seed: " + ", ".join(f"{d:+.3f}" for d in diffs)
            )
    return "\n".join(lines + ([""] + paired if paired else []))


def results_table(record: dict, results: list[dict]) -> str:
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    header = ["arm", "runs", "held-out pass@1 [95% CI]", "zero-tool share", "tools/success", "train reward first/last"]
    header.append("resample rounds/step")  # dynamic sampling, which must be the same for every arm
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm]
        rewards = _series(runs, "reward")
        quarter = max(1, len(rewards) // 4)
        trend = f"{_mean(rewards[:quarter])} / {_mean(rewards[-quarter:])}" if rewards else "n/a"
        row = [
            ARM_NAMES[arm],
            str(len(runs)),
            _fmt(*bootstrap_interval([_success_table(results, arm)], [1.0])),
            _mean([r["after"]["audit"].get("zero_tool_success_share") for r in runs]),
            _mean([r["after"]["audit"].get("tools_per_success") for r in runs]),
            trend,
            _mean(_series(runs, "sgcd/resample/rounds")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    before = record["before"]
    lines.append(
        f"\nWarm start (before RL), held-out greedy pass@1: {before['pass@1']:.3f} on {len(before['task_success'])} tasks"
    )
    for arm in arms:
        if arm == "off" or "off" not in arms:
            continue
        paired = bootstrap_interval([_success_table(results, arm), _success_table(results, "off")], [1.0, -1.0])
        lines.append(f"Paired {ARM_NAMES[arm]} - GRPO (same seeds and tasks): {_fmt(*paired)}")
    return "\n".join(lines)


def plot_curves(results: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 3, figsize=(15, 8))
    axes = [grid[1, 2], *grid.flat[:5]]  # the held-out bars last, the curves first
    keys = (
        ("reward", f"train reward ({WINDOW}-step moving average, mean over seeds)"),
        ("sgcd/audit/zero_tool_success_share", "zero-tool share of successes"),
        ("sgcd/audit/tools_per_success", "tool calls per success"),
        ("sgcd/localization/lift", "credit lift on decisive tokens (median per step)"),
        ("sgcd/localization/credit_share", "share of eligible tokens with W > 1"),
    )
    for arm in ARMS:
        runs = [r for r in results if r["arm"] == arm]
        for (key, title), ax in zip(keys, axes[1:]):
            steps, values = step_series(runs, key)
            if values:
                values = moving_average(values) if key == "reward" else values
                ax.plot(steps, values, label=ARM_NAMES[arm])
            ax.set(title=title, xlabel="step")
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    for offset, category in ((-0.2, "action"), (0.2, "information")):
        values = [
            statistics.mean(
                r["after"]["per_category"].get(category, {}).get("pass@1", 0.0) for r in results if r["arm"] == a
            )
            for a in arms
        ]
        axes[0].bar([i + offset for i in range(len(arms))], values, width=0.4, label=category)
    axes[0].set_xticks(range(len(arms)), [ARM_NAMES[a] for a in arms])
    axes[0].set(title="held-out pass@1 by category", ylim=(0, 1))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(output_dir: str, record: dict, results: list[dict], *, command: str = "") -> str:
    """Write `results.md` (and `curves.png` when matplotlib is there) under `output_dir`; returns the markdown."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    train_min = sum(r["wall_s"]["train"] + r["wall_s"]["eval"] for r in results) / 60
    report = (
        f"# Experiment results\n\nCommand: `{command}`\n\nMachine: {machine}. Runs: {len(results)}, "
        f"{train_min:.1f} min of training and evaluation (warm start: {record['wall_s']['warm_start']:.0f} s).\n\n"
        f"Settings: `{json.dumps(record['settings'])}`\n\n{results_table(record, results)}\n\n"
        f"Learning speed and credit:\n\n{learning_table(results)}\n"
    )
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(report)
    try:
        plot_curves(results, os.path.join(output_dir, "curves.png"))
    except ImportError:
        pass
    return report


def unfinished_runs(output_dir: str) -> list[dict]:
    """Runs with a checkpoint but no line in the results file yet: `arm`, `seed`, `step` and the `log_history` of
    their last checkpoint (`runs/<arm>-seed<seed>/checkpoint-N/trainer_state.json`)."""
    done = {(r["arm"], r["seed"]) for r in read_results(os.path.join(output_dir, RESULTS_FILE))}
    found = []
    runs_dir = os.path.join(output_dir, "runs")
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        arm, _, seed = name.rpartition("-seed")
        checkpoints = [c for c in os.listdir(os.path.join(runs_dir, name)) if c.startswith("checkpoint-")]
        if (arm, int(seed)) in done or not checkpoints:
            continue
        last = max(checkpoints, key=lambda c: int(c.split("-")[1]))
        with open(os.path.join(runs_dir, name, last, "trainer_state.json")) as f:
            state = json.load(f)
        found.append(
            {"arm": arm, "seed": int(seed), "step": state["global_step"], "log_history": state["log_history"]}
        )
    return found


def progress_lines(output_dir: str) -> list[str]:
    """One line per unfinished run: steps so far, train reward, credit lift and W > 1 share (medians over steps)."""
    lines = []
    for run in unfinished_runs(output_dir):
        auc, _ = learning_speed(run)
        lines.append(
            f"{ARM_NAMES.get(run['arm'], run['arm'])} seed {run['seed']}: {run['step']} steps (last checkpoint), "
            f"train reward {auc:.3f} (mean over steps), credit lift {_median_logged([run], 'sgcd/localization/lift')} "
            f"(median over credit steps; pooled {_median_logged([run], 'sgcd/localization/pooled_lift')}), "
            f"W > 1 share {_median_logged([run], 'sgcd/localization/credit_share')}"
        )
    return lines


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.experiment import EXPERIMENT_FILE

    folder = sys.argv[1] if len(sys.argv) > 1 else "outputs/experiment"
    with open(os.path.join(folder, EXPERIMENT_FILE)) as f:
        print(write_report(folder, json.load(f), read_results(os.path.join(folder, RESULTS_FILE))))
    print("\n".join(["", "Unfinished runs:"] + progress_lines(folder)) if unfinished_runs(folder) else "")
