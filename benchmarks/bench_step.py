"""SGCD step time over GRPO step time, same config and seed, with the split of where the time goes.

    .venv/bin/python benchmarks/bench_step.py --quick                 # tiny model, ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_step.py --model smollm2         # the bundled SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/bench_step.py --model /path --device cuda

Both arms run the same tool-use batches (the first assistant turn of half the rows is a scripted real tool call, so
groups are mixed and SGCD has work to do; everything else is the model's own generation) from the same seed; they
differ only in `credit_mode` ("off" = GRPO bit for bit, "sgcd" = the full method with the offline contrast
reference). Printed: median step time of each arm over the repeats, the ratio (goal <= 1.25, reference latency
excluded), and the SGCD split: generation (incl. tool calls), TRL's scoring (rewards, old log-probs), credit reference,
dense scoring, rest of the credit stage, and the optimisation step (forward + backward + optimizer). Both arms run
with TRL's default gradient checkpointing and in the same precision (`--precision auto`: bf16 autocast with float32 weights on
a GPU or a CPU with AMX / AVX512-BF16, else float32).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for tests.trainer_utils

import torch  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from trl_sgcd import SGCDTrainer  # noqa: E402
from trl_sgcd.tooluse.models import bundled_model_dir, tiny_model_dir  # noqa: E402
from trl_sgcd.tooluse.warmstart import bf16_is_fast  # noqa: E402


def _timed(obj, name, bucket):
    fn = getattr(obj, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


def run_arm(model_path, mode, *, steps, completion_len, device, seed, bf16=False):
    from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward

    times = []
    split_per_step = []
    cls = scripted_first_turn(SGCDTrainer)
    with tempfile.TemporaryDirectory() as out:
        args = tiny_args(
            out,
            credit_mode=mode,
            max_steps=steps,
            max_completion_length=completion_len,
            use_cpu=device == "cpu",
            seed=seed,
            learning_rate=1e-6,
            bf16=bf16,
        )
        trainer = cls(
            model=model_path,
            reward_funcs=toy_reward,
            train_dataset=toy_dataset(8),
            args=args,
            environment_factory=ToyLookupEnv,
        )
        bucket: dict[str, float] = {}
        # Class-level methods of GRPOTrainer wrapped on the instance: the phases of one step.
        for name in ("training_step", "_generate_and_score_completions", "_generate", "_apply_credit"):
            _timed(trainer, name, bucket)
        _timed(trainer.credit_scorer, "score", bucket)
        _timed(trainer.reference_builder, "build", bucket)
        original_step = trainer.training_step

        def step(*a, **k):
            before = dict(bucket)
            t0 = time.perf_counter()
            result = original_step(*a, **k)
            times.append(time.perf_counter() - t0)
            split_per_step.append({key: bucket.get(key, 0.0) - before.get(key, 0.0) for key in bucket})
            return result

        trainer.training_step = step
        trainer.train()
    return times, split_per_step


def summarise(times, splits, skip_first):
    times, splits = times[skip_first:], splits[skip_first:]
    total = statistics.median(times)
    med = {k: statistics.median(s.get(k, 0.0) for s in splits) for k in splits[0]} if splits else {}
    gen_score = med.get("_generate_and_score_completions", 0.0)
    credit = med.get("_apply_credit", 0.0)
    split = {
        "generation": med.get("_generate", 0.0),
        "trl_scoring": gen_score - med.get("_generate", 0.0) - credit,
        "reference": med.get("build", 0.0),
        "dense_scoring": med.get("score", 0.0),
        "credit_rest": credit - med.get("build", 0.0) - med.get("score", 0.0),
        "optimisation": total - gen_score,
    }
    return total, split


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, smollm2, or a model folder")
    parser.add_argument("--steps", type=int, default=4, help="training steps per arm (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="arms are alternated this many times")
    parser.add_argument("--completion-len", type=int, default=96)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps, 2 repeats")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16 = autocast with float32 weights; auto = bf16 on a GPU or a CPU with AMX/AVX512-BF16",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.steps, args.repeats = "tiny", 3, 2
    bf16 = args.precision == "bf16" or (args.precision == "auto" and (args.device == "cuda" or bf16_is_fast()))
    path = {"tiny": tiny_model_dir, "smollm2": bundled_model_dir}.get(args.model, lambda: args.model)()
    assert issubclass(SGCDTrainer, GRPOTrainer)
    results = {"off": [], "sgcd": []}
    splits = {"off": [], "sgcd": []}
    for repeat in range(args.repeats):
        for mode in ("off", "sgcd"):  # alternate arms so drift on a noisy machine hits both
            times, split = run_arm(
                path,
                mode,
                steps=args.steps,
                completion_len=args.completion_len,
                device=args.device,
                seed=42 + repeat,
                bf16=bf16,
            )
            results[mode].extend(times[1:])
            splits[mode].extend(split[1:])
    off, _ = summarise(results["off"], splits["off"], 0)
    sgcd, split = summarise(results["sgcd"], splits["sgcd"], 0)
    ratio = (sgcd - split["reference"]) / off
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"bench_step: model={args.model} device={device} steps/arm={args.steps} (first dropped) "
        f"repeats={args.repeats} completion_len={args.completion_len} precision={'bf16' if bf16 else 'fp32'}"
    )
    print(f"{'arm':<6}{'median step s':>15}{'n':>5}")
    print(f"{'grpo':<6}{off:>15.3f}{len(results['off']):>5}")
    print(f"{'sgcd':<6}{sgcd:>15.3f}{len(results['sgcd']):>5}")
    print(f"ratio sgcd/grpo (reference latency excluded): {ratio:.3f}  (goal <= 1.25)")
    print("sgcd split (median s per step):")
    for key, value in split.items():
        print(f"  {key:<14}{value:>8.3f}  {100 * value / sgcd:5.1f}%")
    return ratio


if __name__ == "__main__":
    main()
