"""SGCD step time over GRPO step time, same config and seed, with the split of where the time goes.

    .venv/bin/python benchmarks/bench_step.py --quick                 # tiny model, toy tool env, ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_step.py --model smollm2         # the bundled SmolLM2-135M-Instruct, toy env
    .venv/bin/python benchmarks/bench_step.py --env airline --model smollm2 --steps 2 --repeats 1   # 8-rollout airline
    .venv/bin/python benchmarks/bench_step.py --model /path --device cuda
    .venv/bin/python benchmarks/bench_step.py --env compact --steps 4 --repeats 2   # the experiment's own step

Both arms run the same tool-use batches from the same seed and differ only in `credit_mode` ("off" = GRPO bit for
bit, "sgcd" = the full method with the offline contrast reference); arms alternate within a repeat, so drift on a
noisy machine hits both. `--env toy`: the first assistant turn of half the rows is a scripted real tool call of the
toy look-up env (mixed groups), the rest is the model's own. `--env airline`: one bundled airline task per step, 8
rollouts (`--rollouts`); the first turn of every row is scripted without decoding (even rows the task's first gold
call `get_reservation_details`, odd rows `get_user_details` of the requesting user: both return real ~300-token
observations), the reward is whether that first call was the gold one (so every group is mixed), and every later
turn is the model's own, up to `--completion-len` tokens and 3 tool calls (`--scripted all`: a scripted one-line
answer instead, so no token is decoded and the step is TRL's scoring, credit and optimisation only); prompts are the
real ~1.15k-token airline policy with its tool schemas. `--env compact`: the step of `benchmarks/experiment.py
--profile cpu-compact` exactly (its `training_config`: 8 rollouts = 2 tasks x 4, LoRA r16, dynamic sampling, the real
verifier, nothing scripted) on the compact airline profile (`CompactAirlineEnv`, ~460-token prompts), from the
profile's cached warm start (`--model warm`, built by `benchmarks/compact_profile.py` or the experiment).

Printed: median step time of each arm over the measured steps (the first step of each run is dropped), the ratio
(reference latency excluded) and the SGCD split: generation (incl. tool calls), TRL's scoring (rewards, old
log-probs), credit reference, dense scoring, rest of the credit stage, loss forward, backward, and optimizer step.
Levers (applied to both arms): `--lora R` (LoRA of rank R on all linear layers instead of full fine-tuning),
`--no-gradient-checkpointing`, `--micro-batch M` (airline: M rollouts per loss forward, gradient accumulation over
the 8), `--no-share-prefix` (dense scoring re-encodes every row's prompt, the behaviour before
shared-prefix scoring), `--threads N` (torch intra-op threads). `--precision auto`: bf16 autocast with float32 weights
on a GPU or a CPU with AMX / AVX512-BF16, else float32.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for tests.trainer_utils

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from trl_sgcd import SGCDConfig, SGCDTrainer  # noqa: E402
from trl_sgcd.tooluse.models import bundled_model_dir, tiny_model_dir  # noqa: E402
from trl_sgcd.tooluse.warmstart_cache import bf16_is_fast  # noqa: E402

PHASES = ("training_step", "_generate_and_score_completions", "_generate", "_apply_credit", "compute_loss")


def _timed(obj, name, bucket):
    fn = getattr(obj, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


class _StepClock(TrainerCallback):
    """Wall time of whole optimizer steps (training step + optimizer), and the phase buckets of each."""

    def __init__(self, bucket):
        self.bucket, self.steps, self.splits = bucket, [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0, self.before = time.perf_counter(), dict(self.bucket)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self.t0)
        self.splits.append({k: self.bucket.get(k, 0.0) - self.before.get(k, 0.0) for k in self.bucket})


# ------------------------------------------------------------------------------------------------------ airline arm
def _first_call(task: dict, gold: bool) -> str:
    """The scripted first assistant turn: the task's first gold call, or a look-up of the requesting user."""
    import json

    if gold:
        call = task["gold_actions"][0]
    else:
        user = re.search(r"user id (\w+)", task["instruction"]).group(1)
        call = {"name": "get_user_details", "arguments": {"user_id": user}}
    return "<tool_call>\n%s\n</tool_call><|im_end|>" % json.dumps(
        {"name": call["name"], "arguments": call["arguments"]}
    )


def first_call_reward(completions, environments=None, **kwargs) -> list[float]:
    """1.0 when the rollout's first tool call is the task's first gold call (benchmark reward: mixed groups)."""
    gold = [env.task["gold_actions"][0] for env in environments]
    return [
        float(bool(env.calls) and env.calls[0]["name"] == g["name"] and env.calls[0]["arguments"] == g["arguments"])
        for env, g in zip(environments, gold)
    ]


def airline_dataset(n: int):
    """Train tasks whose first gold call is `get_reservation_details` and whose instruction names the user."""
    from trl_sgcd.envs import make_airline_dataset

    rows = make_airline_dataset("train")
    keep = [
        i
        for i, row in enumerate(rows)
        if '"get_reservation_details"' in row["gold_actions"].split(",")[0]
        and "user id " in row["prompt"][1]["content"]
    ]
    return rows.select(keep[:n])


SCRIPTED_ANSWER = "I looked this up for you; the details are in the record above.<|im_end|>"


def scripted_airline(trainer_cls, *, all_turns: bool = False):
    """`trainer_cls` whose first generation turn is scripted (no decoding); later turns are the model's own, or with
    `all_turns` a scripted final answer (no decoding at all: the step is scoring and optimisation only)."""

    class ScriptedAirline(trainer_cls):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            if not self.model.training:
                return super()._generate_single_turn(
                    prompt_ids, images, multimodal_fields, num_generations, has_tool_images
                )
            if num_generations == 1:  # a tool-loop turn, after an observation
                if all_turns:
                    answer = self.processing_class(SCRIPTED_ANSWER, add_special_tokens=False)["input_ids"]
                    return [list(answer) for _ in prompt_ids], None
                return super()._generate_single_turn(
                    prompt_ids, images, multimodal_fields, num_generations, has_tool_images
                )
            texts = [_first_call(env.task, gold=i % 2 == 0) for i, env in enumerate(self.environments)]
            return [self.processing_class(t, add_special_tokens=False)["input_ids"] for t in texts], None

    return ScriptedAirline


# ------------------------------------------------------------------------------------------------------------- arms
def _trainer(env, model_path, mode, out, o):
    common = dict(
        credit_mode=mode,
        max_steps=o.steps,
        max_completion_length=o.completion_len,
        use_cpu=o.device == "cpu",
        seed=o.seed,
        learning_rate=1e-6,
        bf16=o.bf16,
        gradient_checkpointing=o.gradient_checkpointing,
        credit_share_prefix=o.share_prefix,
    )
    peft_config = None
    if o.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=o.lora, lora_alpha=2 * o.lora, target_modules="all-linear", task_type="CAUSAL_LM")
    if env == "toy":
        from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward

        return scripted_first_turn(SGCDTrainer)(
            model=model_path,
            reward_funcs=toy_reward,
            train_dataset=toy_dataset(8),
            args=tiny_args(out, **common),
            environment_factory=ToyLookupEnv,
            peft_config=peft_config,
        )
    from trl_sgcd.envs import AIRLINE_PRIVATE_COLUMNS, AirlineEnv

    args = SGCDConfig(
        output_dir=out,
        report_to="none",
        per_device_train_batch_size=o.micro_batch or o.rollouts,
        gradient_accumulation_steps=o.rollouts // (o.micro_batch or o.rollouts),  # one generation batch per step
        credit_scoring_batch_size=o.rollouts,  # one scoring micro-batch per group
        num_generations=o.rollouts,
        max_tool_calling_iterations=3,
        temperature=0.8,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        credit_reference_backend="contrast",
        credit_private_columns=list(AIRLINE_PRIVATE_COLUMNS),
        credit_chunk_size=64,
        **common,
    )
    return scripted_airline(SGCDTrainer, all_turns=o.scripted == "all")(
        model=model_path,
        reward_funcs=first_call_reward,
        train_dataset=airline_dataset(o.steps),
        args=args,
        environment_factory=AirlineEnv,
        peft_config=peft_config,
    )


def _compact_trainer(model_path, mode, out, o):
    """The experiment's trainer for one arm (benchmarks/experiment.py, profile cpu-compact), `o.steps` steps."""
    from dataclasses import replace

    from benchmarks.experiment import PROFILES, training_config
    from trl_sgcd.envs.airline import airline_environment, airline_reward, make_airline_dataset

    s = replace(PROFILES["cpu-compact"], steps=o.steps, save_steps=10**6, lora_r=o.lora or 16)
    args = training_config(s, mode, o.seed, out, bf16=o.bf16)  # save_steps beyond the last step: no checkpoint
    peft_config = None
    if s.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    return SGCDTrainer(
        model=model_path,
        reward_funcs=airline_reward,
        args=args,
        train_dataset=make_airline_dataset("train", seed=s.task_seed, profile="compact"),
        environment_factory=airline_environment("compact"),
        peft_config=peft_config,
    )


def compact_warm_start() -> str:
    """The cached warm start of the cpu-compact experiment profile (built on first use, ~20 min on 2 cores)."""
    from benchmarks.experiment import PROFILES, warm_start_kwargs
    from trl_sgcd.tooluse.warmstart import warm_start

    return warm_start(progress=True, **warm_start_kwargs(PROFILES["cpu-compact"]))


def run_arm(env, model_path, mode, o):
    """Train `o.steps` steps of one arm; per-step wall times and phase buckets."""
    with tempfile.TemporaryDirectory() as out:
        trainer = (
            _compact_trainer(model_path, mode, out, o) if env == "compact" else _trainer(env, model_path, mode, out, o)
        )
        bucket: dict[str, float] = {}
        for name in PHASES:  # methods of GRPOTrainer / Trainer wrapped on the instance: the phases of one step
            _timed(trainer, name, bucket)
        _timed(trainer.credit_scorer, "score", bucket)
        _timed(trainer.reference_builder, "build", bucket)
        clock = _StepClock(bucket)
        trainer.add_callback(clock)
        trainer.train()
        seen = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]  # cumulative
    return clock.steps, clock.splits, (seen[-1] / len(seen)) if seen else 0.0


def summarise(times, splits):
    total = statistics.median(times)
    med = {k: statistics.median(s.get(k, 0.0) for s in splits) for k in splits[0]} if splits else {}
    gen_score = med.get("_generate_and_score_completions", 0.0)
    credit = med.get("_apply_credit", 0.0)
    step = med.get("training_step", 0.0)
    split = {
        "generation": med.get("_generate", 0.0),
        "trl_scoring": gen_score - med.get("_generate", 0.0) - credit,
        "reference": med.get("build", 0.0),
        "dense_scoring": med.get("score", 0.0),
        "credit_rest": credit - med.get("build", 0.0) - med.get("score", 0.0),
        "loss_forward": med.get("compute_loss", 0.0),
        "backward": step - gen_score - med.get("compute_loss", 0.0),
        "optimizer": total - step,
    }
    return total, split


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="tiny, smollm2, warm (compact), or a model folder")
    parser.add_argument("--env", choices=("toy", "airline", "compact"), default="toy")
    parser.add_argument("--steps", type=int, default=4, help="training steps per arm (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="arms are alternated this many times")
    parser.add_argument("--rollouts", type=int, default=8, help="airline: rollouts per step (one task)")
    parser.add_argument("--completion-len", type=int, default=None, help="default 96 (toy), 640 (airline)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arms", default="off,sgcd", help="comma-separated credit modes, alternated")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps, 2 repeats")
    parser.add_argument(
        "--keep-first", dest="skip", action="store_const", const=0, default=1, help="measure the first step too"
    )
    parser.add_argument(
        "--scripted", choices=("first", "all"), default="first", help="airline: script the first turn, or every turn"
    )
    parser.add_argument("--micro-batch", type=int, default=0, help="airline: rollouts per loss forward (0 = all)")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full fine-tuning)")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--no-share-prefix", dest="share_prefix", action="store_false")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16 = autocast with float32 weights; auto = bf16 on a GPU or a CPU with AMX/AVX512-BF16",
    )
    o = parser.parse_args(argv)
    if o.quick:
        o.model, o.steps, o.repeats = "tiny", 3, 2
    if o.model is None:
        o.model = "warm" if o.env == "compact" else "tiny"
    if o.env == "compact":
        o.lora = o.lora or 16  # the experiment's adapters
    if o.completion_len is None:
        o.completion_len = {"airline": 640, "compact": 384}.get(o.env, 96)
    if o.threads:
        torch.set_num_threads(o.threads)
    o.bf16 = o.precision == "bf16" or (o.precision == "auto" and (o.device == "cuda" or bf16_is_fast()))
    path = {"tiny": tiny_model_dir, "smollm2": bundled_model_dir, "warm": compact_warm_start}.get(
        o.model, lambda: o.model
    )()
    assert issubclass(SGCDTrainer, GRPOTrainer)
    arms = o.arms.split(",")
    results = {mode: [] for mode in arms}
    splits = {mode: [] for mode in arms}
    tokens = {mode: [] for mode in arms}
    t_start = time.perf_counter()
    for repeat in range(o.repeats):
        for mode in arms:  # alternate arms so drift on a noisy machine hits both
            o.seed = 42 + repeat
            times, split, n_tokens = run_arm(o.env, path, mode, o)
            results[mode].extend(times[o.skip :])
            splits[mode].extend(split[o.skip :])
            tokens[mode].append(n_tokens)
            print(f"[bench_step] repeat {repeat} {mode}: steps {[round(t, 1) for t in times]} s", flush=True)
    device = torch.cuda.get_device_name() if o.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"bench_step: env={o.env} model={o.model} device={device} threads={torch.get_num_threads()} "
        f"steps/arm={o.steps} ({'first dropped' if o.skip else 'first kept'}) repeats={o.repeats} "
        f"completion_len={o.completion_len} "
        f"precision={'bf16' if o.bf16 else 'fp32'} lora={o.lora or 'off'} micro_batch={o.micro_batch or 'all'} "
        f"gradient_checkpointing={o.gradient_checkpointing} share_prefix={o.share_prefix} "
        f"load_avg={os.getloadavg()[0]:.1f} wall={time.perf_counter() - t_start:.0f}s"
    )
    print(f"{'arm':<8}{'median step s':>15}{'n':>5}{'tokens/step':>13}")
    medians = {}
    for mode in arms:
        medians[mode], split = summarise(results[mode], splits[mode])
        label = "grpo" if mode == "off" else mode
        print(f"{label:<8}{medians[mode]:>15.3f}{len(results[mode]):>5}{statistics.median(tokens[mode]):>13.0f}")
    ratio = None
    if "off" in medians and "sgcd" in medians:
        sgcd, split = summarise(results["sgcd"], splits["sgcd"])
        ratio = (sgcd - split["reference"]) / medians["off"]
        print(f"ratio sgcd/grpo (reference latency excluded): {ratio:.3f}  (goal <= 1.10)")
    for mode in arms:
        total, split = summarise(results[mode], splits[mode])
        print(f"{'grpo' if mode == 'off' else mode} split (median s per step):")
        for key, value in split.items():
            print(f"  {key:<14}{value:>8.3f}  {100 * value / total:5.1f}%")
    return ratio


if __name__ == "__main__":
    main()
