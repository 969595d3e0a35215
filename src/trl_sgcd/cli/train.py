"""`trl-sgcd train`: train a tool-use agent with SGCD (or its matched GRPO baseline) from a YAML recipe.

```bash
trl-sgcd train --config recipes/tiny_cpu.yaml --max_steps 1
accelerate launch --config_file recipes/accelerate/zero3.yaml -m trl_sgcd train --config recipes/qwen3_4b_sgcd.yaml
```

Arguments come from three dataclasses, [`SGCDScriptArguments`] (data, environment, rewards, tools), [`SGCDConfig`]
(everything of `GRPOConfig` plus the `credit_*` fields) and [`~trl.ModelConfig`] (model and LoRA), parsed by
[`~trl.TrlParser`]: dataclass defaults < the YAML file given with `--config` < command-line flags. Unlike TRL's own
`grpo.py`, everything that can be checked without a model is checked first (unknown fields, import paths, optional
dependencies, dataset, splits and columns), so a typo fails in seconds with a message naming it, not after the model
has loaded. `--dry_run` stops after those checks.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .parser import (  # noqa: F401 - re-exported: the parser is part of this command's public surface
    NEEDS_CONFIG_OR_MODEL,
    PROG,
    SGCDScriptArguments,
    check_unknown_fields,
    make_parser,
    parse_args,
    read_config_file,
)
from .utils import (
    AIRLINE_ENV,
    AIRLINE_REWARD,
    BUILTIN_AIRLINE,
    UsageError,
    builtin_model_dir,
    check_environment_reset,
    checked_split,
    load_callable,
    load_dataset_dict,
    log,
    quiet_known_noise,
    resolve_model_name,
)


@dataclass
class TrainPlan:
    """Everything resolved from the arguments before the model loads."""

    model_name: str
    reward_funcs: list[Callable] = field(default_factory=list)
    environment_factory: Callable | None = None
    tools: list[Callable] = field(default_factory=list)
    train_dataset: Any = None
    eval_dataset: Any = None
    scripted_sibling: Callable | None = None


def apply_builtin_defaults(script_args, training_args) -> None:
    """With `dataset_name="builtin:airline"`, fill unset environment, reward and private columns with the airline ones."""
    if script_args.dataset_name != BUILTIN_AIRLINE:
        return
    if script_args.environment_factory is None:
        script_args.environment_factory = AIRLINE_ENV
    if not training_args.credit_private_columns:
        from trl_sgcd.envs.airline import AIRLINE_PRIVATE_COLUMNS

        training_args.credit_private_columns = list(AIRLINE_PRIVATE_COLUMNS)


def check_dependencies(training_args, model_args) -> None:
    """
    Fail before loading anything when an option needs a package that is missing. (A named API key variable that is
    not set is `SGCDConfig`'s own `ValueError`, reported while parsing: the CLI and the Python API agree.)
    """
    from trl_sgcd.credit.reference.builder import uses_reference_llm
    from trl_sgcd.import_utils import is_litellm_available, is_peft_available, is_vllm_available

    if training_args.use_vllm and not is_vllm_available():
        raise UsageError("use_vllm=True needs vLLM: `pip install trl-sgcd[vllm]`, or pass `--use_vllm false`.")
    if model_args.use_peft and not is_peft_available():
        raise UsageError("use_peft=True needs PEFT: `pip install peft`.")
    if uses_reference_llm(training_args) and not is_litellm_available():
        raise UsageError("credit_reference_backend='litellm' needs litellm: `pip install litellm`.")


def resolve_callables(script_args) -> tuple[list[Callable], Callable | None, list[Callable]]:
    """Import reward functions, the environment factory and tools; airline reward by default for its environment."""
    reward_funcs = [load_callable(p, what="reward function") for p in script_args.reward_funcs]
    env_factory = None
    if script_args.environment_factory:
        env_factory = load_callable(script_args.environment_factory, what="environment_factory")
    tools = [load_callable(p, what="tool") for p in script_args.tools]
    env_owns_reward = inspect.isclass(env_factory) and callable(getattr(env_factory, "get_reward", None))
    if not reward_funcs and script_args.dataset_name == BUILTIN_AIRLINE and not env_owns_reward:
        reward_funcs = [load_callable(AIRLINE_REWARD, what="reward function")]
    if not reward_funcs and env_factory is None:
        raise UsageError(
            "No reward source: set reward_funcs, or an environment_factory whose environment defines get_reward()."
        )
    return reward_funcs, env_factory, tools


def resolve_datasets(script_args, training_args):
    """Load the train (and eval) split and check the columns. Returns `(train_dataset, eval_dataset)`."""
    name = script_args.dataset_name
    if name is None:
        if script_args.environment_factory is None:
            raise UsageError("dataset_name is required unless an environment_factory provides the prompts.")
        if training_args.credit_private_columns:
            raise UsageError(f"credit_private_columns={training_args.credit_private_columns} needs a dataset_name.")
        if training_args.max_steps <= 0:
            raise UsageError("max_steps must be > 0 when the environment provides the prompts (no dataset_name).")
        return None, None
    splits = load_dataset_dict(name, script_args.dataset_config)
    columns = dict(
        prompt_column=script_args.prompt_column,
        private_columns=training_args.credit_private_columns,
        dataset_name=name,
    )
    train = checked_split(splits, script_args.dataset_train_split, field_name="dataset_train_split", **columns)
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = checked_split(splits, script_args.dataset_test_split, field_name="dataset_test_split", **columns)
    return train, evaluation


def prepare(script_args, training_args, model_args) -> TrainPlan:
    """
    Every check that needs no model: model name, dependencies, import paths, dataset, splits, columns and prompts, the
    environment's `reset` on the first row, the checkpoint to resume from, and the Hub token and endpoint for a push.
    """
    model_name = resolve_model_name(model_args.model_name_or_path)
    check_dependencies(training_args, model_args)
    check_resume(training_args)
    check_push(training_args)
    apply_builtin_defaults(script_args, training_args)
    reward_funcs, env_factory, tools = resolve_callables(script_args)
    train_dataset, eval_dataset = resolve_datasets(script_args, training_args)
    check_environment_reset(env_factory, train_dataset, dataset_name=script_args.dataset_name)
    script = None
    if script_args.scripted_sibling:
        if env_factory is None:
            from trl_sgcd.envs.scripted import NEEDS_ENVIRONMENT

            raise UsageError(NEEDS_ENVIRONMENT)
        script = load_callable(script_args.scripted_sibling, what="scripted_sibling")
    return TrainPlan(model_name, reward_funcs, env_factory, tools, train_dataset, eval_dataset, script)


def check_resume(training_args) -> None:
    """`--resume_from_checkpoint`: `true`/`latest` needs a checkpoint in `output_dir`; a path must be a checkpoint."""
    value = _resume_arg(training_args.resume_from_checkpoint)
    if value is None:
        return
    if value is True:
        from transformers.trainer_utils import get_last_checkpoint

        output_dir = training_args.output_dir
        if not os.path.isdir(output_dir) or get_last_checkpoint(output_dir) is None:
            raise UsageError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no checkpoint-* folder in "
                f"output_dir={output_dir!r} to resume from. Train with --save_strategy steps first, or pass a path."
            )
        return
    if not os.path.isdir(value):
        raise UsageError(f"--resume_from_checkpoint {value!r}: no such folder.")
    if not os.path.isfile(os.path.join(value, "trainer_state.json")):
        raise UsageError(
            f"--resume_from_checkpoint {value!r} is not a training checkpoint (no trainer_state.json); a saved model "
            "alone cannot be resumed: start from it with --model_name_or_path instead."
        )


def check_push(training_args) -> None:
    """`--push_to_hub`: a Hub token and a reachable endpoint, checked before training rather than after it."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import constants, get_token

    token = training_args.hub_token or get_token()
    if not token:
        raise UsageError(
            "--push_to_hub needs a Hub token: run `hf auth login`, set $HF_TOKEN, or pass --hub_token; "
            "or train without --push_to_hub and upload the output_dir later."
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UsageError("--push_to_hub with HF_HUB_OFFLINE set: the push would fail after training. Unset it.")
    import socket
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise UsageError(
            f"--push_to_hub: cannot reach {constants.ENDPOINT} ({e}); the push would fail after training. Check the "
            "network, or train without --push_to_hub and upload the output_dir later."
        ) from e


def describe(plan: TrainPlan, training_args) -> str:
    """A few lines that say what will run."""
    size = "environment-provided prompts" if plan.train_dataset is None else f"{len(plan.train_dataset)} prompts"
    rewards, tools = ([getattr(f, "__name__", repr(f)) for f in fs] for fs in (plan.reward_funcs, plan.tools))
    env = getattr(plan.environment_factory, "__name__", None)
    return (
        f"model={plan.model_name} | train: {size} | environment={env} | reward_funcs={rewards} | "
        f"tools={tools} | scripted_sibling={getattr(plan.scripted_sibling, '__name__', None)} | "
        f"credit_mode={training_args.credit_mode} | "
        f"credit_private_columns={training_args.credit_private_columns} | output_dir={training_args.output_dir}"
    )


def build_trainer(plan: TrainPlan, training_args, model_args):
    """Load the tokenizer, build the PEFT/quantization configs and the [`SGCDTrainer`] (which loads the model)."""
    from transformers import AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    from trl_sgcd.trainer import SGCDTrainer

    model_path = builtin_model_dir(plan.model_name)
    log(f"Loading tokenizer and model from {model_path}")
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs
    tokenizer = AutoTokenizer.from_pretrained(
        model_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        padding_side="left",
        truncation_side="left",
    )
    return SGCDTrainer(
        model=plan.model_name,  # a builtin name resolves inside the trainer (and names the model card's base model)
        reward_funcs=plan.reward_funcs or None,
        args=training_args,
        train_dataset=plan.train_dataset,
        eval_dataset=plan.eval_dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        tools=plan.tools or None,
        environment_factory=plan.environment_factory,
        scripted_sibling=plan.scripted_sibling,
    )


def _resume_arg(value: str | None):
    """`"true"`/`"latest"` -> `True` (the last checkpoint in `output_dir`); a path stays a path."""
    if isinstance(value, str) and value.strip().lower() in ("true", "last", "latest"):
        return True
    return value or None


def train(plan: TrainPlan, script_args, training_args, model_args) -> None:
    """Build the trainer, train, save, and push to the Hub when `push_to_hub` is set."""
    trainer = build_trainer(plan, training_args, model_args)
    trainer.model_card_dataset_name = script_args.dataset_name  # the model card names it (`trl_sgcd.modelcard`)
    rounds = ", drawing more rounds for mixed groups" if training_args.credit_dynamic_sampling else ""
    log(
        f"Training: each step generates {trainer.num_generations} rollouts per prompt (tool calls included) and "
        f"scores them{rounds}, then updates; on CPU the first step can take minutes before the bar moves."
    )
    trainer.train(resume_from_checkpoint=_resume_arg(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"[trl-sgcd] Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)  # the card lists only a Hub id under `datasets:`
        trainer.accelerator.print(f"[trl-sgcd] Model pushed to https://huggingface.co/{trainer.hub_model_id}.")
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, destroy the process group
        trainer.end()


def check_model_early(argv: list[str]) -> None:
    """
    The model check of [`prepare`], run on the raw arguments before TRL is imported (~5-8 s), so that a mistyped
    `--model_name_or_path` (flag, else the `--config` recipe's) fails in well under a second. Silent when it passes.
    """
    name = None
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in ("--model_name_or_path", "--model-name-or-path"):
            name = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    if name is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
        name = read_config_file(path).get("model_name_or_path") if os.path.isfile(path) else None
    if isinstance(name, str) and name:
        resolve_model_name(name, field="model_name_or_path", warn=lambda message: None)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trl-sgcd train`. Returns the exit status; [`UsageError`] propagates to the CLI."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    check_model_early(argv)
    script_args, training_args, model_args = parse_args(argv)
    plan = prepare(script_args, training_args, model_args)
    log(f"Checks passed: {describe(plan, training_args)}")
    if script_args.dry_run:
        log("Dry run: stopping before loading the model.")
        return 0
    quiet_known_noise()
    train(plan, script_args, training_args, model_args)
    return 0
