"""Supervised warm start of the bundled model on the expert trajectories of the airline TRAIN tasks (before RL).

The paper warm-starts its policy on successful agent trajectories before GRPO / SGCD, because group-relative RL only
learns from groups that are *mixed* (some rollouts succeed, some fail). SmolLM2-135M-Instruct out of the box solves
almost none of the airline tasks, so every group would be all-failure and carry no signal. `warm_start` fine-tunes it
with TRL's `SFTTrainer` on `trl_sgcd.tooluse.expert.expert_sft_dataset("train")` (tool calls and real observations rendered
with the ChatML tool template; assistant-only loss), briefly enough that its sampled success on the train tasks stays
mixed, and caches the result:

```python
from trl_sgcd.tooluse.warmstart import warm_start

path = warm_start(**WARM_START_DEFAULTS)   # ~9-10 min on 2 CPU cores the first time, then a cache hit
```

The folder is keyed by every setting (and a hash of the SFT data), written to a temporary folder, completed with a
marker file written last, and moved into place, so a killed run never leaves a folder that looks finished. A second
call with the same settings returns the folder at once. The held-out TEST tasks are never seen.

`train_success(path, ...)` measures what the warm start is for: the sampled success rate on train tasks and how many
tasks have mixed outcomes over k samples (the share of GRPO groups that would be mixed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from trl_sgcd.tooluse.warmstart_cache import (  # noqa: F401 - the cache's public names stay importable from here
    WARM_START_MARKER,
    _publish,
    _resolve_model,
    _resolve_precision,
    bf16_is_fast,
    is_warm_started,
    read_marker,
    sft_dataset,
    warm_start_folder,
    warm_start_settings,
)

WARM_START_DEFAULTS = {
    "epochs": 1.0,
    "max_steps": 24,
    "max_length": 2048,
    "learning_rate": 3e-4,
    "n_tasks": 96,
    "batch_size": 2,
}
"""Settings of the demo's warm start (measured to leave a mixed success rate on train tasks, see the README)."""


def warm_start(
    *,
    output_dir: str | None = None,
    epochs: float,
    max_length: int,
    learning_rate: float,
    seed: int = 0,
    n_tasks: int | None = None,
    progress: bool = True,
    batch_size: int = 2,
    max_steps: int | None = None,
    precision: str = "auto",
    model_name_or_path: str | None = None,
    cache_dir: str | None = None,
    profile: str = "full",
) -> str:
    """Fine-tune a model on the expert trajectories of the airline TRAIN tasks with `SFTTrainer`, cached.

    Args:
        output_dir (`str`, *optional*):
            Folder of the result. Default: `<cache_root()>/warm_start/<key>`, where the key names every setting.
        epochs (`float`):
            Passes over the expert trajectories (ignored when `max_steps` is set).
        max_length (`int`):
            Longest tokenised conversation; longer ones are truncated (the bundled conversations have <= ~1.9k tokens).
        learning_rate (`float`):
            Peak learning rate (linear decay, no warm-up).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the tasks and of training.
        n_tasks (`int`, *optional*):
            Train on the first `n_tasks` TRAIN tasks only (all 96 when `None`).
        progress (`bool`, *optional*, defaults to `True`):
            Show the trainer's tqdm progress bar and a line per phase.
        batch_size (`int`, *optional*, defaults to `2`):
            Conversations per optimizer step.
        max_steps (`int`, *optional*):
            Optimizer steps; overrides `epochs`.
        precision (`str`, *optional*, defaults to `"auto"`):
            `"fp32"`, `"bf16"` (autocast, float32 master weights) or `"auto"`: bf16 on a CPU with native bf16 matrix
            units (AMX / AVX512-BF16), else fp32. The saved model is float32 either way.
        model_name_or_path (`str`, *optional*):
            Model to start from: `None` / `"builtin:smollm2"` (SmolLM2-135M-Instruct), `"builtin:tiny"` (random test
            model; the older `"bundled"` / `"tiny"` also work) or a folder with a tool-ready tokenizer.
        cache_dir (`str`, *optional*):
            Parent of the default output folder instead of `cache_root()`.
        profile (`str`, *optional*, defaults to `"full"`):
            Airline task profile of the expert trajectories: `"full"` or `"compact"` (`trl_sgcd.envs.airline_compact`).

    Returns:
        `str`: The folder with the fine-tuned model, its tokenizer and the marker `trl_sgcd_warm_start.json`
        (settings, wall time, training log).
    """
    settings = warm_start_settings(
        epochs=epochs,
        max_length=max_length,
        learning_rate=learning_rate,
        seed=seed,
        n_tasks=n_tasks,
        batch_size=batch_size,
        max_steps=max_steps,
        precision=precision,
        model_name_or_path=model_name_or_path,
        profile=profile,
    )
    folder = warm_start_folder(settings, output_dir=output_dir, cache_dir=cache_dir)
    if is_warm_started(folder, settings):
        if progress:
            print(f"[warm start] cached: {folder}", flush=True)
        return folder
    t0 = time.perf_counter()
    path, _ = _resolve_model(model_name_or_path)
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".warm-")
    try:
        trainer, tokenizer, train_s = _train(path, settings, tmp, epochs=epochs, progress=progress, folder=folder)
        _save(trainer, tokenizer, tmp)
        marker = {
            "settings": settings,
            "source": path,
            "train_s": train_s,
            "total_s": time.perf_counter() - t0,
            "global_step": trainer.state.global_step,
            "log_history": [
                {k: v for k, v in entry.items() if isinstance(v, (int, float))} for entry in trainer.state.log_history
            ],
        }
        _publish(tmp, folder, marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"[warm start] done in {time.perf_counter() - t0:.0f} s: {folder}", flush=True)
    return folder


def _no_activation_checkpointing(config_class) -> dict:
    """`activation_checkpointing=False` where transformers has that name (>= 5.24, which warns on the old one), else
    `gradient_checkpointing=False`."""
    from dataclasses import fields

    names = {f.name for f in fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": False}


def _sft_config(settings: dict, trainer_dir: str, *, epochs: float, progress: bool):
    """TRL `SFTConfig` of a warm start: assistant-only loss, linear decay without warm-up, no checkpoints."""
    import torch
    from trl import SFTConfig

    max_steps = settings["max_steps"]
    return SFTConfig(
        output_dir=trainer_dir,
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps else -1,
        per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=settings["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_length=settings["max_length"],
        assistant_only_loss=True,
        packing=False,
        **_no_activation_checkpointing(SFTConfig),
        pad_to_multiple_of=64,
        seed=settings["seed"],
        data_seed=settings["seed"],
        use_cpu=not torch.cuda.is_available(),
        bf16=settings["precision"] == "bf16",
        fp16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )


def _train(path: str, settings: dict, tmp: str, *, epochs: float, progress: bool, folder: str):
    """Run `SFTTrainer` from the model at `path`; returns `(trainer, tokenizer, training seconds)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from trl_sgcd.tooluse.models import prepare_tokenizer

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dataset = sft_dataset(settings["n_tasks"], settings["seed"], settings.get("profile", "full"))
    args = _sft_config(settings, os.path.join(tmp, "trainer"), epochs=epochs, progress=progress)
    if progress:
        steps = settings["max_steps"]
        print(
            f"[warm start] SFT on {len(dataset)} expert trajectories ({settings['precision']}, "
            f"lr {settings['learning_rate']:g}, batch {settings['batch_size']}, "
            f"{f'{steps} steps' if steps else f'{epochs:g} epochs'}) -> {folder}",
            flush=True,
        )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    t_train = time.perf_counter()
    trainer.train()
    return trainer, tokenizer, time.perf_counter() - t_train


def _save(trainer, tokenizer, tmp: str) -> None:
    """The fine-tuned model (float32) and its tokenizer into `tmp`, without the trainer's own folder."""
    import torch

    model = trainer.model
    model.to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)


def train_success(
    model_or_path,
    tokenizer=None,
    *,
    n_tasks: int | None = 24,
    k: int = 4,
    temperature: float = 0.4,
    top_p: float = 0.95,
    max_turns: int = 4,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    precision: str = "auto",
    profile: str = "full",
) -> dict:
    """Sampled success on TRAIN tasks: what decides whether GRPO / SGCD groups are mixed.

    Returns:
        `dict`: `success_rate` (mean over the k samples of every task), `mixed_share` (tasks whose k samples are
        neither all successes nor all failures), `all_fail_share`, `all_success_share`, `per_category` success rates,
        `num_tasks`, `k` and the sampling settings.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgcd.envs.airline import airline_environment, airline_reward, make_airline_dataset
    from trl_sgcd.tooluse.evaluation import evaluate

    if isinstance(model_or_path, str):
        tokenizer = AutoTokenizer.from_pretrained(model_or_path)
        model_or_path = AutoModelForCausalLM.from_pretrained(model_or_path)
    from trl_sgcd.tooluse.prefix_cache import prefix_cached_generate_fn, shared_prefix

    dataset = make_airline_dataset("train", seed=seed, n=n_tasks, profile=profile)
    environment = airline_environment(profile)
    generate_fn = prefix_cached_generate_fn(
        model_or_path,
        tokenizer,
        shared_prefix(tokenizer, dataset, environment),
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        bf16=_resolve_precision(precision) == "bf16",
    )
    result = evaluate(
        model_or_path,
        tokenizer,
        dataset,
        environment_factory=environment,
        reward_func=airline_reward,
        k=k,
        temperature=temperature,
        top_p=top_p,
        greedy=False,
        max_turns=max_turns,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        generate_fn=generate_fn,
    )
    per_task = [sum(r >= 1.0 for r in rec["sample_rewards"]) for rec in result["records"]]
    n = len(per_task)
    categories: dict[str, list[float]] = {}
    for rec in result["records"]:
        categories.setdefault(rec["category"], []).extend(float(r >= 1.0) for r in rec["sample_rewards"])
    return {
        "success_rate": sum(per_task) / (n * k),
        "mixed_share": sum(0 < s < k for s in per_task) / n,
        "all_fail_share": sum(s == 0 for s in per_task) / n,
        "all_success_share": sum(s == k for s in per_task) / n,
        "per_category": {c: sum(v) / len(v) for c, v in sorted(categories.items())},
        "num_tasks": n,
        "k": k,
        "temperature": temperature,
        "top_p": top_p,
        "max_turns": max_turns,
        "max_new_tokens": max_new_tokens,
    }
