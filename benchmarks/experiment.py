"""The paper's comparison on the bundled airline environment, resumable: arms x seeds from ONE cached warm start.

    .venv/bin/python benchmarks/experiment.py --profile cpu --arms off sgcd --seeds 0 1 2 --budget-minutes 50
    .venv/bin/python benchmarks/experiment.py --profile gpu                      # the GPU-sized run (docs/results.md)
    .venv/bin/python benchmarks/experiment.py --model tiny --steps 1 --sft-steps 1 --seeds 0     # plumbing check

What it runs. The base model is warm-started once (SFT on the expert trajectories of the airline TRAIN tasks,
`trl_sgcd.tooluse.warmstart`, cached by its settings) and evaluated once on the held-out TEST tasks. Each run (one arm,
one seed) then trains LoRA adapters (`--lora-r 0`: full fine-tuning) on the TRAIN tasks for `--steps` steps and is
evaluated on the same TEST tasks: greedy pass@1 overall and per category, the tool-use audit, the per-task successes
(for paired intervals), and optionally pass^k. Every arm gets the same config but `credit_mode`: the same rollouts per
step, the same dynamic sampling (`credit_dynamic_sampling=True`, the matched control), the same learning rate. The
airline world (database and tasks) is `--task-seed` for everyone; `--seeds` vary the trainer's seed (data order and
sampling). Nothing is tuned on the TEST tasks.

What it writes, under --output-dir:
- `experiment.json`: the settings and the warm start's evaluation; other settings in the same folder are refused.
- `results.jsonl`: one line per finished run, appended (and fsync'ed) as the run ends; never rewritten.
- `runs/<arm>-seed<seed>/`: the run's checkpoints while it trains (the adapters, optimizer and SGCD state, every
  `--save-steps` steps) and `adapter/` (or `model/`) when it is done.
- `results.md` and `curves.png`, rebuilt from `results.jsonl` after each run (`experiment_report.py`).

Resuming. Invoked again with the same settings it skips the runs in `results.jsonl` and continues an unfinished run
from its last checkpoint. `--budget-minutes M` stops cleanly: no run starts after M minutes, and a run in progress
checkpoints at the end of the step that crosses M and stops. `--max-runs N`: at most N runs in this invocation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARMS = ("off", "sgcd", "uniform", "no_reference", "direct_sd", "sdpo")
EXPERIMENT_FILE = "experiment.json"


@dataclass(frozen=True)
class ExperimentSettings:
    """Sizes of every run of one experiment (each field has a --flag; the profiles below set them together)."""

    model: str = "bundled"
    precision: str = "auto"  # "auto": bf16 autocast on CPUs with native bf16 units (and CUDA), else fp32
    task_seed: int = 0  # the airline world of the warm start, the training and the evaluation tasks
    env_profile: str = "full"  # "full" (AirlineEnv, 7 tools) or "compact" (CompactAirlineEnv, 3 tools, ~460 tokens)
    # warm start (SFT, shared by every run)
    sft_tasks: int = 96
    sft_steps: int = 24
    sft_learning_rate: float = 3e-4
    sft_batch_size: int = 2
    sft_max_length: int = 2048
    # RL (identical for every arm but credit_mode)
    steps: int = 8
    train_tasks: int = 0  # 0: all 96 train tasks; N: a fixed set of the first N (learning speed on known tasks)
    rollouts_per_step: int = 8
    num_generations: int = 4
    max_completion_length: int = 384
    max_tool_calls: int = 3
    learning_rate: float = 1e-4
    lora_r: int = 16  # 0: full fine-tuning
    lora_alpha: int = 32
    temperature: float = 0.8
    top_p: float = 0.95
    min_mixed_fraction: float = 0.5
    max_resample_rounds: int = 2
    save_steps: int = 2
    use_vllm: bool = False
    # evaluation (held-out TEST tasks)
    eval_tasks: int = 20
    eval_max_turns: int = 4
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 10
    k: int = 1  # pass^k samples per test task at the training temperature (1: greedy pass@1 only)


PROFILES = {
    # 2 CPU cores: ~3-6 min per RL step of 8 airline rollouts (docs/results.md), so 8 steps is ~40 min per run
    "cpu": ExperimentSettings(),
    # one GPU with the CUDA `vllm` colocate: 100 steps of 16 rollouts per run (docs/results.md, "GPU-sized run")
    "gpu": ExperimentSettings(
        precision="bf16",
        steps=100,
        rollouts_per_step=16,
        num_generations=8,
        max_completion_length=640,
        use_vllm=True,
        save_steps=10,
    ),  # fmt: skip
    # 2 CPU cores, the compact airline profile (trl_sgcd.envs.airline_compact): 100 steps of 8 rollouts per run
    "cpu-compact": ExperimentSettings(
        env_profile="compact",
        sft_tasks=64,
        sft_max_length=1024,
        steps=100,
        train_tasks=0,
        max_completion_length=384,  # TRL counts tool results: the expert's episodes are 243 tokens (median), 322 max
        max_tool_calls=3,
        save_steps=5,
        eval_max_turns=3,
        eval_max_new_tokens=96,
    ),  # fmt: skip
}


def settings_hash(settings: ExperimentSettings) -> str:
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:12]


def run_key(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


# ---------------------------------------------------------------------------------------------------- resuming


def check_experiment(output_dir: str, settings: ExperimentSettings) -> dict | None:
    """The stored experiment record, or `None` for a new folder; ValueError if it was made with other settings."""
    path = os.path.join(output_dir, EXPERIMENT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    stored = record["settings"]
    changed = sorted(k for k, v in asdict(settings).items() if stored.get(k) != v)
    if changed:
        raise ValueError(
            f"{path} was made with other settings ({', '.join(f'{k}: {stored.get(k)!r}' for k in changed)}); "
            "resume with the same flags, or use another --output-dir."
        )
    return record


# ---------------------------------------------------------------------------------------------------- one run


def training_config(settings: ExperimentSettings, arm: str, seed: int, run_dir: str, *, bf16: bool):
    """The `SGCDConfig` of one run: every arm gets exactly this, with only `credit_mode` (and the folder) changed.

    The demo's config (`trl_sgcd.demo.phases.sgcd_config`) with the experiment's checkpoints, vLLM and sampling rounds.
    """
    from trl_sgcd.demo.phases import sgcd_config

    s = settings
    return sgcd_config(
        s,
        run_dir,
        bf16=bf16,
        progress=False,
        seed=seed,
        credit_mode=arm,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=1,
        use_vllm=s.use_vllm,
        vllm_mode="colocate",
        credit_min_mixed_fraction=s.min_mixed_fraction,
        credit_max_resample_rounds=s.max_resample_rounds,
    )


def _budget_callback(deadline: float | None):
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        """Save a checkpoint and stop at the end of the first step that ends after `deadline` (time.monotonic)."""

        def on_step_end(self, args, state, control, **kwargs):
            if deadline is not None and time.monotonic() >= deadline and state.global_step < state.max_steps:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopAtDeadline()


def track_localization(trainer) -> None:
    """Log where each credit step's weights land against the verifier's decisive tokens (`trl_sgcd.envs.decisive`),
    with TRL's metrics of that step: `sgcd/localization/lift` (median over scored rollouts with credit and a decisive
    token), `.../pooled_lift` (mass-weighted), `.../credit_share` (eligible tokens with W > 1) and `.../decisive_share`
    (eligible tokens that are decisive). Arms without scoring (`off`) log nothing. Wraps the instance's credit hook
    (single process: the batch is all rows)."""
    import math
    import statistics

    from trl_sgcd.credit.report.localization import pooled_lift, rollout_localization
    from trl_sgcd.credit.stats import total_rewards
    from trl_sgcd.envs.airline_tasks import get_task
    from trl_sgcd.envs.decisive import decisive_token_mask

    apply_credit, tokenizer = trainer._apply_credit, trainer.processing_class

    def with_localization(output: dict, batch: dict) -> dict:
        output = apply_credit(output, batch)
        try:
            localization(output, batch)
        except Exception as e:  # noqa: BLE001 - a read-out must never stop a long run; the failure is counted
            print(f"[experiment] localization read-out failed: {e!r}", flush=True)
            trainer._log({"sgcd/localization/errors": 1.0})
        return output

    def localization(output: dict, batch: dict) -> None:
        result = trainer.last_credit
        if result is None or result.eligible is None or not result.rows:
            return
        rewards = total_rewards(batch["rewards_per_func"], trainer.reward_weights).tolist()
        rows = []
        for j, i in enumerate(result.rows):
            row, cm = batch["inputs"][i], output["completion_mask"][i]
            n = int(cm.sum())
            decisive = decisive_token_mask(
                get_task(row["task_id"], seed=int(row.get("seed", 0))),
                output["completion_ids"][i][:n].tolist(),
                output["tool_mask"][i][:n].tolist(),
                tokenizer,
                success=rewards[i] >= trainer.args.credit_success_threshold,
            )
            weights = result.weights[i][:n].float().cpu().numpy()
            rows.append(rollout_localization(weights, result.eligible[j][:n].cpu().numpy(), decisive))
        lifts = [r["lift"] for r in rows if not math.isnan(r["lift"])]
        eligible = sum(r["num_eligible"] for r in rows)
        metrics = {
            "sgcd/localization/credit_share": sum(r["num_credit"] for r in rows) / max(eligible, 1),
            "sgcd/localization/decisive_share": sum(r["num_decisive"] for r in rows) / max(eligible, 1),
        }
        if lifts:
            metrics["sgcd/localization/lift"] = statistics.median(lifts)
        if not math.isnan(pooled := pooled_lift(rows)):
            metrics["sgcd/localization/pooled_lift"] = pooled
        trainer._log(metrics)

    trainer._apply_credit = with_localization


def evaluate_policy(model, tokenizer, settings: ExperimentSettings, *, bf16: bool) -> dict:
    """Held-out evaluation: greedy pass@1 (prefix-cached generation), and pass^k when `settings.k > 1`."""
    from trl_sgcd.envs.airline import airline_environment, airline_reward, make_airline_dataset
    from trl_sgcd.tooluse.evaluation import evaluate
    from trl_sgcd.tooluse.prefix_cache import prefix_cached_generate_fn, shared_prefix

    s = settings
    test = make_airline_dataset("test", seed=s.task_seed, n=s.eval_tasks, profile=s.env_profile)
    environment = airline_environment(s.env_profile)
    common = dict(environment_factory=environment, reward_func=airline_reward, max_turns=s.eval_max_turns)
    common.update(max_new_tokens=s.eval_max_new_tokens, batch_size=s.eval_batch_size, seed=s.task_seed)
    prefix = shared_prefix(tokenizer, test, environment)
    generate_fn = prefix_cached_generate_fn(model, tokenizer, prefix, max_new_tokens=s.eval_max_new_tokens, bf16=bf16)
    greedy = evaluate(model, tokenizer, test, k=1, greedy=True, progress=False, generate_fn=generate_fn, **common)
    result = {k: v for k, v in greedy.items() if k != "records"}
    result["task_success"] = {r["task_id"]: bool(r["success"]) for r in greedy["records"]}
    if s.k > 1:
        sampled = evaluate(
            model, tokenizer, test, k=s.k, greedy=False, temperature=s.temperature, top_p=s.top_p, progress=False,
            **common,
        )  # fmt: skip
        result["pass^k"] = {"k": s.k, "value": sampled["pass^k"]}
    return result


def train_run(settings, arm, seed, run_dir, *, warm_start_dir, bf16, deadline=None) -> dict | None:
    """Train one run (resuming from its last checkpoint), evaluate it and save its adapters.

    Returns the run's result, or `None` when the budget stopped it before its last step (its checkpoint stays).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from trl_sgcd.envs.airline import airline_environment, airline_reward, make_airline_dataset
    from trl_sgcd.trainer import SGCDTrainer

    t0 = time.perf_counter()
    s = settings
    os.makedirs(run_dir, exist_ok=True)
    checkpoint = get_last_checkpoint(run_dir)
    peft_config = None
    if s.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    model = AutoModelForCausalLM.from_pretrained(warm_start_dir, dtype=torch.float32)
    train_set = make_airline_dataset("train", seed=s.task_seed, n=s.train_tasks or None, profile=s.env_profile)
    trainer = SGCDTrainer(
        model=model,
        reward_funcs=airline_reward,
        args=training_config(s, arm, seed, run_dir, bf16=bf16),
        train_dataset=train_set,
        processing_class=AutoTokenizer.from_pretrained(warm_start_dir),
        environment_factory=airline_environment(s.env_profile),
        peft_config=peft_config,
        callbacks=[_budget_callback(deadline)],
    )
    track_localization(trainer)
    trainer.train(resume_from_checkpoint=checkpoint)
    steps = trainer.state.global_step
    log_history = [{k: v for k, v in e.items() if isinstance(v, (int, float, str))} for e in trainer.state.log_history]
    if steps < s.steps:
        return None
    train_s = time.perf_counter() - t0

    policy = trainer.model
    saved = os.path.join(run_dir, "adapter" if s.lora_r > 0 else "model")
    policy.save_pretrained(saved)
    if s.lora_r > 0:
        policy = policy.merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(warm_start_dir)
    t1 = time.perf_counter()
    after = evaluate_policy(policy, tokenizer, s, bf16=bf16)
    for folder in os.listdir(run_dir):  # the run is done: its resume checkpoints are no longer needed
        if folder.startswith("checkpoint-"):
            shutil.rmtree(os.path.join(run_dir, folder), ignore_errors=True)
    return {
        "arm": arm,
        "seed": seed,
        "steps": steps,
        "resumed_from": os.path.basename(checkpoint) if checkpoint else None,
        "after": after,
        "log_history": log_history,
        "saved": saved,
        "wall_s": {"train": round(train_s, 1), "eval": round(time.perf_counter() - t1, 1)},
    }


# ---------------------------------------------------------------------------------------------------- the experiment


def warm_start_kwargs(s: ExperimentSettings) -> dict:
    """The `trl_sgcd.tooluse.warmstart.warm_start` arguments of an experiment's warm start (its cache key)."""
    return dict(
        epochs=1.0, max_length=s.sft_max_length, learning_rate=s.sft_learning_rate, precision=s.precision,
        seed=s.task_seed, n_tasks=s.sft_tasks, batch_size=s.sft_batch_size, max_steps=s.sft_steps,
        model_name_or_path=s.model, profile=s.env_profile,
    )  # fmt: skip


def prepare(settings: ExperimentSettings, output_dir: str) -> dict:
    """Warm start (cached) and its held-out evaluation, once per experiment folder; returns the experiment record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgcd.tooluse.warmstart import warm_start
    from trl_sgcd.tooluse.warmstart_cache import warm_start_settings

    record = check_experiment(output_dir, settings)
    if record is not None:
        return record
    s = settings
    ws_kwargs = warm_start_kwargs(s)
    t0 = time.perf_counter()
    ws_dir = warm_start(progress=False, **ws_kwargs)
    bf16 = warm_start_settings(**ws_kwargs)["precision"] == "bf16"
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(ws_dir, dtype=torch.float32)
    before = evaluate_policy(model, AutoTokenizer.from_pretrained(ws_dir), s, bf16=bf16)
    record = {
        "settings": asdict(s),
        "settings_hash": settings_hash(s),
        "warm_start": ws_dir,
        "bf16": bf16,
        "before": before,
        "wall_s": {"warm_start": round(t1 - t0, 1), "eval_before": round(time.perf_counter() - t1, 1)},
    }
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, EXPERIMENT_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, os.path.join(output_dir, EXPERIMENT_FILE))
    return record


def run_experiment(
    settings: ExperimentSettings, output_dir: str, *, arms, seeds, budget_minutes=None, max_runs=None, command=""
) -> list[dict]:
    """Run every (seed, arm) not yet in `results.jsonl`, seed by seed; returns all finished runs."""
    from benchmarks.experiment_report import RESULTS_FILE, append_result, read_results, write_report

    start = time.monotonic()
    deadline = None if budget_minutes is None else start + 60.0 * budget_minutes
    record = prepare(settings, output_dir)
    path = os.path.join(output_dir, RESULTS_FILE)
    done = {run_key(r["arm"], r["seed"]) for r in read_results(path)}
    finished = 0
    for seed in seeds:
        for arm in arms:
            key = run_key(arm, seed)
            if key in done:
                continue
            if (max_runs is not None and finished >= max_runs) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                print(f"[experiment] stopping before {key} (budget); rerun the same command to continue", flush=True)
                return read_results(path)
            print(f"[experiment] {key} ...", flush=True)
            run_dir = os.path.join(output_dir, "runs", key)
            result = train_run(
                settings,
                arm,
                seed,
                run_dir,
                warm_start_dir=record["warm_start"],
                bf16=record["bf16"],
                deadline=deadline,
            )
            if result is None:
                print(f"[experiment] {key} stopped by the budget; its checkpoint is in {run_dir}", flush=True)
                return read_results(path)
            result["settings_hash"] = record["settings_hash"]
            append_result(path, result)
            done.add(key)
            finished += 1
            write_report(output_dir, record, read_results(path), command=command)
            print(f"[experiment] {key} done: held-out pass@1 {result['after']['pass@1']:.3f}", flush=True)
    return read_results(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--arms", nargs="+", default=["off", "sgcd"], choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--output-dir", default="outputs/experiment")
    p.add_argument("--budget-minutes", type=float, default=None, help="stop cleanly after this long (resumable)")
    p.add_argument("--max-runs", type=int, default=None, help="finish at most this many runs in this invocation")
    sizes = p.add_argument_group("sizes (override the profile; a resumed experiment must keep them)")
    for f in fields(ExperimentSettings):
        kind = {"int": int, "float": float, "str": str, "bool": lambda v: v.lower() in ("1", "true", "yes")}[f.type]
        sizes.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parser().parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name) for f in fields(ExperimentSettings) if getattr(args, f.name) is not None
    }
    settings = replace(PROFILES[args.profile], **overrides)
    if settings.rollouts_per_step % settings.num_generations:
        raise ValueError(f"--rollouts-per-step ({settings.rollouts_per_step}) must be a multiple of --num-generations")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    command = "python benchmarks/experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return run_experiment(
        settings,
        args.output_dir,
        arms=args.arms,
        seeds=args.seeds,
        budget_minutes=args.budget_minutes,
        max_runs=args.max_runs,
        command=command,
    )


if __name__ == "__main__":
    main()
