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

import difflib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .utils import (
    BUILTIN_AIRLINE,
    UsageError,
    builtin_model_dir,
    check_columns,
    get_split,
    load_callable,
    load_dataset_dict,
    log,
    resolve_model_name,
    split_commas,
)

PROG = "trl-sgcd train"
AIRLINE_ENV = "trl_sgcd.envs.airline:AirlineEnv"
AIRLINE_REWARD = "trl_sgcd.envs.airline:airline_reward"
NEEDS_CONFIG_OR_MODEL = (
    f"needs a recipe or a model: `{PROG} --config recipes/tiny_cpu.yaml`, or "
    f"`{PROG} --model_name_or_path MODEL --dataset_name DATA ...`; `{PROG} --help` lists every field."
)


@dataclass
class SGCDScriptArguments:
    r"""
    Script arguments of `trl-sgcd train`: where the data, the environment, the rewards and the tools come from.

    Parameters:
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            A local `.json`/`.jsonl`/`.csv`/`.parquet` file, a local folder, a Hub dataset name, or `"builtin:airline"`
            (the bundled mini-airline tasks; it also defaults `environment_factory`, `reward_funcs` and
            `credit_private_columns` to the airline ones when they are unset). `None` is allowed only with an
            `environment_factory` whose `reset()` returns the prompt (then `max_steps` sets the length).
        dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Dataset configuration name (`name=` of `datasets.load_dataset`).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate on (only read when `eval_strategy` is not `"no"`).
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column holding the prompt (text or a list of chat messages); renamed to `"prompt"` for `GRPOTrainer`.
        environment_factory (`str` or `None`, *optional*, defaults to `None`):
            Import path `"package.module:Name"` of a callable that returns a fresh environment (TRL's
            `environment_factory`: public methods become tools, `reset()` starts an episode, an optional
            `get_reward()` scores it).
        reward_funcs (`list[str]`, *optional*, defaults to `[]`):
            Import paths of reward functions (`"package.module:name"`), summed by `GRPOTrainer`.
        tools (`list[str]`, *optional*, defaults to `[]`):
            Import paths of standalone tool functions (typed, with Google-style docstrings).
        dry_run (`bool`, *optional*, defaults to `False`):
            Run every check (fields, imports, dataset, columns), print the plan, and exit before loading the model.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Local .json/.jsonl/.csv/.parquet file, local folder, Hub dataset name, or 'builtin:airline'."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on (when eval_strategy != 'no')."}
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    environment_factory: str | None = field(
        default=None, metadata={"help": "Import path 'package.module:Name' of the environment factory."}
    )
    reward_funcs: list[str] = field(
        default_factory=list, metadata={"help": "Import paths 'package.module:name' of reward functions."}
    )
    tools: list[str] = field(default_factory=list, metadata={"help": "Import paths of standalone tool functions."})
    dry_run: bool = field(default=False, metadata={"help": "Check everything, print the plan, exit before loading."})


@dataclass
class TrainPlan:
    """Everything resolved from the arguments before the model loads."""

    model_name: str
    reward_funcs: list[Callable] = field(default_factory=list)
    environment_factory: Callable | None = None
    tools: list[Callable] = field(default_factory=list)
    train_dataset: Any = None
    eval_dataset: Any = None


def make_parser(prog: str = PROG):
    """
    The [`~trl.TrlParser`] over ([`SGCDScriptArguments`], [`SGCDConfig`], [`~trl.ModelConfig`]).

    `--help` lists `--config` first, then the `credit_*` fields of SGCD under their own heading, then the script
    arguments, the rest of `GRPOConfig` and the model arguments; each `--no_<flag>` of a boolean says that it turns
    the flag off.
    """
    import argparse

    from trl import ModelConfig, TrlParser

    from trl_sgcd.config import SGCDConfig

    class SGCDParser(TrlParser):
        def _add_dataclass_arguments(self, dtype):
            _add_grouped_arguments(self, dtype)

    parser = SGCDParser(
        (SGCDScriptArguments, SGCDConfig, ModelConfig),
        prog=prog,
        usage=f"{prog} [--config RECIPE.yaml] [--FIELD VALUE ...]",
        description="Train a tool-use agent with SGCD (or its matched GRPO baseline). Values come from the dataclass "
        "defaults, then the YAML file given with --config, then the flags (the last wins).",
    )
    parser.add_argument(  # consumed by TrlParser before argparse runs; listed here so that --help shows it
        "--config",
        metavar="RECIPE.yaml",
        default=argparse.SUPPRESS,
        help="YAML recipe of field: value pairs (e.g. recipes/tiny_cpu.yaml); flags given after it override it.",
    )
    parser._action_groups.sort(key=lambda g: GROUP_ORDER.index(g.title) if g.title in GROUP_ORDER else 99)
    for action in parser._actions:
        if action.option_strings and action.option_strings[0].startswith("--no_") and action.const is False:
            action.help = f"Turn --{action.dest} off (same as --{action.dest} false)."
            action.default = argparse.SUPPRESS  # the flag's own default stands; `(default: False)` would mislead
    return parser


CREDIT_GROUP = "SGCD credit settings (SGCDConfig, credit_*)"
SCRIPT_GROUP = "data, environment, rewards and tools (SGCDScriptArguments)"
TRAINING_GROUP = "training (GRPOConfig)"
MODEL_GROUP = "model (ModelConfig)"
GROUP_ORDER = ["positional arguments", "options", CREDIT_GROUP, SCRIPT_GROUP, TRAINING_GROUP, MODEL_GROUP]


def _group_title(dtype, name: str) -> str:
    if dtype is SGCDScriptArguments:
        return SCRIPT_GROUP
    if dtype.__name__ == "ModelConfig":
        return MODEL_GROUP
    return CREDIT_GROUP if name.startswith("credit_") else TRAINING_GROUP


def _add_grouped_arguments(parser, dtype) -> None:
    """Add a dataclass's fields as HfArgumentParser does, each into its `--help` group (see [`GROUP_ORDER`])."""
    import dataclasses
    from typing import get_type_hints

    groups = {}
    hints = get_type_hints(dtype)
    for f in dataclasses.fields(dtype):
        if f.init:
            title = _group_title(dtype, f.name)
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            f.type = hints[f.name]
            parser._parse_dataclass_field(groups[title], f)


def parse_args(argv: list[str] | None = None):
    """
    Parse `argv` (defaults < `--config` YAML < flags) into `(script_args, training_args, model_args)`.

    Unknown fields are looked for first, in the YAML file and on the command line, before any dataclass is built, so
    a typo is reported as such rather than as a side effect (e.g. TrainingArguments' device checks). The parser is
    built afresh on every call: `TrlParser` writes the YAML values into its argument defaults.

    Raises:
        [`UsageError`]: for an unknown field (YAML key or flag, with a "did you mean" hint), an unreadable config file,
            or an invalid value (the `ValueError` of a dataclass `__post_init__`, which names the field).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise UsageError(NEEDS_CONFIG_OR_MODEL)
    parser = make_parser()
    check_unknown_fields(parser, argv)
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(argv)
    except (ValueError, OSError) as e:
        hint = " On a CPU-only machine set `use_cpu: true` and `bf16: false`." if "bf16" in str(e) else ""
        raise UsageError(f"{e}{hint}") from e
    training_args.credit_private_columns = split_commas(training_args.credit_private_columns)
    script_args.reward_funcs = split_commas(script_args.reward_funcs)
    script_args.tools = split_commas(script_args.tools)
    return script_args, training_args, model_args


def read_config_file(path: str) -> dict:
    """The mapping of a YAML recipe, or a [`UsageError`] naming the file."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"Cannot read --config {path!r}: {e}") from e
    if not isinstance(config, dict):
        raise UsageError(f"--config {path!r} must contain a YAML mapping of field: value.")
    return config


def check_unknown_fields(parser, argv: list[str]) -> None:
    """Raise a [`UsageError`] naming every unknown YAML key or flag, with the closest known field as a hint."""
    args = list(argv)
    known = {a.dest for a in parser._actions}
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise UsageError("--config needs a path to a YAML recipe.")
        path = args[i + 1]
        config = read_config_file(path)
        if config.get("credit_mode") is False:
            raise UsageError(
                f'credit_mode is false in --config {path!r}: write credit_mode: "off" (quoted; YAML '
                "reads a bare off as false)."
            )
        yaml_keys = [str(k) for k in config if k != "env"]  # `env:` sets environment variables
        _raise_unknown([k for k in yaml_keys if k not in known], known, f"in --config {path!r}")
        del args[i : i + 2]
    _, remaining = parser.parse_known_args(args)
    names = [s[2:].split("=", 1)[0] for s in remaining if s.startswith("--")]
    if not names and remaining:
        raise UsageError(
            f"Unexpected value(s) {remaining} on the command line; flags look like '--learning_rate 5e-7'."
        )
    _raise_unknown(names, known, "on the command line")


def _raise_unknown(names: list[str], known: set[str], where: str) -> None:
    if not names:
        return
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UsageError(f"Unknown field(s) {where}: {', '.join(hints)}. `{PROG} --help` lists every field.")


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
    """Fail before loading anything when an option needs a package that is missing or a key that is not set."""
    from trl_sgcd.credit.modes import credit_mode
    from trl_sgcd.import_utils import is_litellm_available, is_peft_available, is_vllm_available

    if training_args.use_vllm and not is_vllm_available():
        raise UsageError("use_vllm=True needs vLLM: `pip install trl-sgcd[vllm]`, or pass `--use_vllm false`.")
    if model_args.use_peft and not is_peft_available():
        raise UsageError("use_peft=True needs PEFT: `pip install peft`.")
    uses_llm = credit_mode(training_args.credit_mode).uses_reference_builder  # the other modes never call the LLM
    if uses_llm and training_args.credit_reference_backend == "litellm":
        if not is_litellm_available():
            raise UsageError("credit_reference_backend='litellm' needs litellm: `pip install litellm`.")
        key_env = training_args.credit_reference_api_key_env
        if key_env and not os.environ.get(key_env):
            raise UsageError(
                f"credit_reference_api_key_env={key_env!r} but ${key_env} is not set: export it, or "
                "train with the offline reference (--credit_reference_backend contrast)."
            )


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
    train = get_split(splits, script_args.dataset_train_split, field_name="dataset_train_split", dataset_name=name)
    train = check_columns(train, **columns)
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = get_split(
            splits, script_args.dataset_test_split, field_name="dataset_test_split", dataset_name=name
        )
        evaluation = check_columns(evaluation, **columns)
    return train, evaluation


def prepare(script_args, training_args, model_args) -> TrainPlan:
    """Every check that needs no model: model name, dependencies, import paths, dataset, splits and columns."""
    model_name = resolve_model_name(model_args.model_name_or_path)
    check_dependencies(training_args, model_args)
    apply_builtin_defaults(script_args, training_args)
    reward_funcs, env_factory, tools = resolve_callables(script_args)
    train_dataset, eval_dataset = resolve_datasets(script_args, training_args)
    return TrainPlan(model_name, reward_funcs, env_factory, tools, train_dataset, eval_dataset)


def describe(plan: TrainPlan, training_args) -> str:
    """A few lines that say what will run."""
    size = "environment-provided prompts" if plan.train_dataset is None else f"{len(plan.train_dataset)} prompts"
    rewards, tools = ([getattr(f, "__name__", repr(f)) for f in fs] for fs in (plan.reward_funcs, plan.tools))
    env = getattr(plan.environment_factory, "__name__", None)
    return (
        f"model={plan.model_name} | train: {size} | environment={env} | reward_funcs={rewards} | "
        f"tools={tools} | credit_mode={training_args.credit_mode} | "
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
        model=model_path,
        reward_funcs=plan.reward_funcs or None,
        args=training_args,
        train_dataset=plan.train_dataset,
        eval_dataset=plan.eval_dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        tools=plan.tools or None,
        environment_factory=plan.environment_factory,
    )


def _resume_arg(value: str | None):
    """`"true"`/`"latest"` -> `True` (the last checkpoint in `output_dir`); a path stays a path."""
    if isinstance(value, str) and value.strip().lower() in ("true", "last", "latest"):
        return True
    return value or None


def train(plan: TrainPlan, script_args, training_args, model_args) -> None:
    """Build the trainer, train, save, and push to the Hub when `push_to_hub` is set."""
    trainer = build_trainer(plan, training_args, model_args)
    trainer.train(resume_from_checkpoint=_resume_arg(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"[trl-sgcd] Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        dataset_name = None if script_args.dataset_name == BUILTIN_AIRLINE else script_args.dataset_name
        trainer.push_to_hub(dataset_name=dataset_name)
        trainer.accelerator.print(f"[trl-sgcd] Model pushed to https://huggingface.co/{trainer.hub_model_id}.")
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, destroy the process group
        trainer.end()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trl-sgcd train`. Returns the exit status; [`UsageError`] propagates to the CLI."""
    script_args, training_args, model_args = parse_args(argv)
    plan = prepare(script_args, training_args, model_args)
    log(f"Checks passed: {describe(plan, training_args)}")
    if script_args.dry_run:
        log("Dry run: stopping before loading the model.")
        return 0
    train(plan, script_args, training_args, model_args)
    return 0
