"""The phases of `trl-sgcd demo`, one function each: warm start, evaluation, SGCD training, outputs and metrics.

`trl_sgcd.demo.run.run_demo` calls them in order, timing each with a `Clock`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict


class Clock:
    """Wall time per named phase."""

    def __init__(self):
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self.start


def say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def model_dir(name: str) -> str:
    """The folder of the demo's `--model` (a builtin model is built, or converted, on the first call)."""
    from trl_sgcd.tooluse.models import builtin_model_dir

    return builtin_model_dir(name)


def warm_start_phase(s, base_dir: str, *, warm_start_dir, progress, clock) -> dict:
    """Run (or find cached) the warm start; `{"dir", "settings", "cached", "marker", "bf16"}`."""
    from trl_sgcd.tooluse.warmstart import warm_start
    from trl_sgcd.tooluse.warmstart_cache import is_warm_started, read_marker, warm_start_folder, warm_start_settings

    kwargs = dict(
        epochs=s.sft_epochs,
        max_length=s.sft_max_length,
        learning_rate=s.sft_learning_rate,
        precision=s.precision,
        seed=s.seed,
        n_tasks=s.sft_tasks,
        batch_size=s.sft_batch_size,
        max_steps=s.sft_steps,
        model_name_or_path=s.model if s.model in ("builtin:smollm2", "builtin:tiny") else base_dir,
    )
    settings = warm_start_settings(**kwargs)
    cached = is_warm_started(warm_start_folder(settings, output_dir=warm_start_dir), settings)
    say(progress, "[demo] 1/4 warm start (SFT on expert trajectories of the train tasks)")
    folder = clock.run("warm_start", warm_start, output_dir=warm_start_dir, progress=progress, **kwargs)
    return {
        "dir": folder,
        "settings": settings,
        "cached": bool(cached),
        "marker": read_marker(folder) or {},
        "bf16": settings["precision"] == "bf16",
    }


def make_evaluator(s, tokenizer, *, bf16: bool, progress: bool):
    """`(test_set, run_eval(policy) -> evaluation result)`: greedy pass@1 on the held-out test tasks."""
    from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset
    from trl_sgcd.tooluse.evaluation import evaluate
    from trl_sgcd.tooluse.prefix_cache import prefix_cached_generate_fn, shared_prefix

    test_set = make_airline_dataset("test", seed=s.seed, n=s.eval_tasks)
    prefix = shared_prefix(tokenizer, test_set)

    def run_eval(policy):  # a fresh prefix cache per call: the weights change between the two evaluations
        generate_fn = prefix_cached_generate_fn(
            policy, tokenizer, prefix, max_new_tokens=s.eval_max_new_tokens, bf16=bf16
        )
        return evaluate(
            policy,
            tokenizer,
            test_set,
            environment_factory=AirlineEnv,
            reward_func=airline_reward,
            k=1,
            greedy=True,
            max_turns=s.eval_max_turns,
            max_new_tokens=s.eval_max_new_tokens,
            batch_size=s.eval_batch_size,
            seed=s.seed,
            progress=progress,
            generate_fn=generate_fn,
        )

    return test_set, run_eval


def sgcd_config(s, rl_dir: str, *, bf16: bool, progress: bool, seed=None, credit_mode=None, **overrides):
    """The demo's `SGCDConfig` (offline contrast reference, airline private columns masked).

    `seed` and `credit_mode` default to `s.seed` and `s.credit_mode`; `overrides` are further `SGCDConfig` fields (the
    experiment's checkpoints, vLLM and dynamic-sampling rounds: `benchmarks/experiment.py`).
    """
    import torch

    from trl_sgcd.config import SGCDConfig
    from trl_sgcd.envs.airline import AIRLINE_PRIVATE_COLUMNS

    seed = s.seed if seed is None else seed
    fields = dict(
        output_dir=rl_dir,
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        report_to="none",
        max_steps=s.steps,
        per_device_train_batch_size=s.rollouts_per_step,
        gradient_accumulation_steps=1,
        num_generations=s.num_generations,
        max_completion_length=s.max_completion_length,
        max_tool_calling_iterations=s.max_tool_calls,
        learning_rate=s.learning_rate,
        lr_scheduler_type="constant",
        temperature=s.temperature,
        top_p=s.top_p,
        beta=0.0,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator (torch warns on CPU)
        credit_mode=s.credit_mode if credit_mode is None else credit_mode,
        credit_dynamic_sampling=True,  # DAPO's mixed-group sampling, the same for every credit mode (GRPO included)
        credit_reference_backend="contrast",
        credit_private_columns=list(AIRLINE_PRIVATE_COLUMNS),
        credit_chunk_size=64,
    )
    return SGCDConfig(**{**fields, **overrides})


def train_phase(s, model, ws_dir: str, args):
    """SGCD (or the chosen `credit_mode`) on the train tasks with the recording trainer; returns the trainer."""
    from transformers import AutoTokenizer

    from trl_sgcd.demo.recording import recording_trainer_class
    from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset

    trainer = recording_trainer_class()(
        model=model,
        reward_funcs=airline_reward,
        args=args,
        train_dataset=make_airline_dataset("train", seed=s.seed),
        processing_class=AutoTokenizer.from_pretrained(ws_dir),
        environment_factory=AirlineEnv,
    )
    trainer.train()
    return trainer


def save_outputs(output_dir: str, trained, tokenizer, before: dict, after: dict) -> str:
    """The checkpoint (plain `transformers` folder) and the per-task evaluation records; returns the checkpoint."""
    checkpoint = os.path.join(output_dir, "checkpoint")
    trained.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    for name, result in (("eval_before.json", before), ("eval_after.json", after)):
        with open(os.path.join(output_dir, name), "w") as f:
            json.dump(result["records"], f, indent=1, default=str)
    return checkpoint


def card_facts(s, trainer, ws: dict, before: dict, after: dict):
    """What the checkpoint's model card says about the demo run: the bundled base model by name (not the warm start's
    cache folder), the warm start, the airline data, environment and reward, the steps, and the held-out pass@1 that
    the airline verifier measured before and after RL."""
    from trl_sgcd.demo.summary import plural
    from trl_sgcd.modelcard import trainer_facts

    facts = trainer_facts(trainer, dataset_name="builtin:airline (train split)")
    facts.base_model = s.model
    settings = ws["settings"]
    length = plural(settings["max_steps"], "step") if settings.get("max_steps") else f"{settings['epochs']:g} epochs"
    facts.warm_start = f"SFT on the expert trajectories of {plural(settings['n_tasks'], 'train task')} ({length})"
    label = f"held-out pass@1, {plural(before['num_tasks'], 'test task')} (greedy, airline verifier)"
    facts.evaluation = [(label, f"{before['pass@1']:.3f} after the warm start, {after['pass@1']:.3f} after RL")]
    return facts


def _eval_summary(result: dict) -> dict:
    """An evaluation result without its per-task message lists (those go to eval_*.json)."""
    return {k: v for k, v in result.items() if k != "records"}


def demo_metrics(s, *, output_dir, ws, train_success, before, after, trainer, args, checkpoint) -> tuple[dict, list]:
    """The metrics dict of `metrics.json` (without wall times), and the weights of every scored rollout's eligible
    tokens (the histogram of `demo.png`; the same tokens as the summary's "scored tokens")."""
    from trl_sgcd import __version__
    from trl_sgcd.demo.plots import weight_histogram
    from trl_sgcd.demo.recording import lift_summary

    credit_log = getattr(trainer, "credit_log", [])
    log_history = [{k: v for k, v in e.items() if isinstance(v, (int, float, str))} for e in trainer.state.log_history]
    scored = [e for e in credit_log if any(r["weights"] for r in e["rows"])]
    all_weights = [w for e in scored for r in e["rows"] for w in r["weights"]]
    cap = args.credit_cap
    metrics = {
        "version": __version__,
        "config": asdict(s) | {"rl_steps": s.steps, "output_dir": output_dir},
        "precision": "bf16" if ws["bf16"] else "fp32",  # resolved: autocast with float32 weights, or float32
        "warm_start": {
            "path": ws["dir"],
            "cached": ws["cached"],
            "settings": ws["settings"],
            "train_s": ws["marker"].get("train_s"),
            "log_history": ws["marker"].get("log_history", []),
        },
        "train_success": train_success,
        "before": _eval_summary(before),
        "after": _eval_summary(after),
        "training": {
            "log_history": log_history,
            "weights": {
                "cap": cap,
                "steps_scored": [e["step"] for e in scored],
                "all_steps": weight_histogram(all_weights, cap) if all_weights else None,
                "rows_scored_per_step": [{"step": e["step"], "rows": len(e["rows"])} for e in credit_log],
            },
            "credit_localization": lift_summary(credit_log),
        },
        "checkpoint": checkpoint,
        "plot": os.path.join(output_dir, "demo.png"),
        "credit_table": None,
        "wall_s": {},
    }
    return metrics, all_weights
