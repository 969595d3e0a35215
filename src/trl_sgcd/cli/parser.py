"""The argument parser of `trl-sgcd train`: [`SGCDScriptArguments`], and a [`~trl.TrlParser`] whose `--help` lists
`--config` first and the `credit_*` fields of [`SGCDConfig`] under their own heading, with unknown fields reported by
name (and a "did you mean") before any dataclass is built.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field

from .utils import UsageError, split_commas, underscore_flags, underscore_options

PROG = "trl-sgcd train"
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
        scripted_sibling (`str` or `None`, *optional*, defaults to `None`):
            Import path of a script `script(env) -> messages` that plays the last rollout of every group in its
            environment (an expert sibling: groups are mixed whenever the policy fails), passed as
            `SGCDTrainer(scripted_sibling=...)`; needs `environment_factory`. Built in:
            `trl_sgcd.envs.scripted:airline_expert_script`, `trl_sgcd.envs.tau2.scripted:tau2_expert_script`.
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
    scripted_sibling: str | None = field(
        default=None,
        metadata={"help": "Import path of a script(env) -> messages that plays the last rollout of every group."},
    )
    dry_run: bool = field(default=False, metadata={"help": "Check everything, print the plan, exit before loading."})


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
        # One flag style (TRL's underscores) in --help; `--output-dir` still parses, see `underscore_flags`.
        kept = [o for o in action.option_strings if not o.startswith("--") or "-" not in o[2:]]
        action.option_strings = kept or action.option_strings
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
    argv = underscore_flags(argv, underscore_options(parser), prog=PROG)  # `--output-dir`: deprecated spelling
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
