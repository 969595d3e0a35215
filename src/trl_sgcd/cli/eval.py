"""`trl-sgcd eval`: greedy pass@1, pass^k per category and the tool-use audit of a checkpoint, under the training harness.

```bash
trl-sgcd eval --model outputs/tiny_cpu                                   # builtin:airline test split, paper harness
trl-sgcd eval --model outputs/run --config recipes/demo_cpu.yaml         # the recipe's harness, data and environment
trl-sgcd eval --model builtin:smollm2 --n 5 --k 4 --output eval.json
trl-sgcd eval --model out/ --dataset_name tasks.jsonl --split train --environment_factory my_env:Env --reward_funcs my_env:score
```

The environment, dataset and reward come the way `trl-sgcd train` takes them (import paths, local files, Hub datasets
or `builtin:airline`); with `--config`, a training recipe fills them and the rollout harness (`max_tool_calling_iterations`,
`max_completion_length`, `temperature`, `top_p`), and flags override it. Without a recipe the harness is the paper's
on a GPU (16 tool-calling rounds, 16,384 tokens) and, on CPU, the demo's evaluation harness (`CPU_HARNESS`: 3 rounds,
2,048 tokens, 128 new tokens per turn), under which an episode of a small model finishes in seconds instead of
minutes. Everything is checked before the model loads: the model folder (never a Hub lookup for a mistyped path), the
split, the sizes, the columns `reset` needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from .utils import (
    AIRLINE_ENV,
    AIRLINE_REWARD,
    BUILTIN_AIRLINE,
    BUILTIN_MODELS,
    DEPRECATED_MODEL_NAMES,
    UsageError,
    builtin_model_dir,
    check_environment_reset,
    checked_split,
    load_callable,
    load_dataset_dict,
    log,
    quiet_known_noise,
    resolve_env_spec,
    resolve_model_name,
    split_commas,
    underscore_flags,
    underscore_options,
)

PROG = "trl-sgcd eval"
RECIPE_KEYS = (  # the keys of a training recipe that `--config` reads; the rest of the recipe is ignored
    "dataset_name",
    "dataset_config",
    "prompt_column",
    "environment_factory",
    "reward_funcs",
    "max_tool_calling_iterations",
    "max_completion_length",
    "temperature",
    "top_p",
)


# Without a recipe, on CPU: the demo's evaluation harness (3 tool-calling rounds, 128 new tokens per turn; the paper's
# 16 rounds and 16,384 tokens do not finish one SmolLM2 episode in 7 minutes on 2 cores). Sampling stays the paper's.
CPU_MAX_TOOL_CALLS, CPU_MAX_COMPLETION_LENGTH, CPU_MAX_NEW_TOKENS = 3, 2048, 128


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)`, except where the help already says what an unset (`None`) value means."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from trl_sgcd.tooluse.harness import PAPER_HARNESS as H

    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        description="Evaluate a checkpoint on held-out tool-use tasks: greedy pass@1, pass^k, per category, and the "
        "tool-use audit. Pass the training recipe with --config RECIPE.yaml: the model is then evaluated under the "
        "harness, dataset and environment it was trained with (scored by the environment's verifier). Without a "
        f"recipe, the harness is the paper's (Table 4: {H.max_tool_calls} tool-calling rounds, "
        f"{H.max_completion_length} tokens) on a GPU and a small one on CPU ({CPU_MAX_TOOL_CALLS} rounds, "
        f"{CPU_MAX_COMPLETION_LENGTH} tokens, {CPU_MAX_NEW_TOKENS} new tokens per turn), so that it finishes. Flags "
        "override both.",
    )
    p.add_argument(
        "--model",
        default="builtin:smollm2",
        help=f"A saved model folder, a Hub id, or one of {', '.join(BUILTIN_MODELS)} (the older "
        f"{', '.join(DEPRECATED_MODEL_NAMES)} still work, with a deprecation message). A mistyped path fails at "
        "once, never as a Hub lookup.",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="RECIPE.yaml",
        help=f"The `trl-sgcd train` recipe the model was trained with (recommended): reads {', '.join(RECIPE_KEYS)} "
        "from it (default: none).",
    )
    p.add_argument(
        "--dataset_name",
        default=None,
        help=f"Tasks: a local .json/.jsonl/.csv/.parquet file or folder, a "
        f"Hub dataset, or {BUILTIN_AIRLINE!r} (default, unless --config sets it).",
    )
    p.add_argument("--dataset_config", default=None, help="Dataset configuration name (default: none).")
    p.add_argument("--split", default="test", help="Split to evaluate on.")
    p.add_argument("--prompt_column", default=None, help="Column holding the prompt (default: 'prompt').")
    p.add_argument(
        "--environment_factory",
        default=None,
        help="Import path 'package.module:Name' of the environment "
        "(default: the airline environment for builtin:airline).",
    )
    p.add_argument(
        "--reward_funcs",
        nargs="+",
        default=None,
        help="Import paths of reward functions, summed (default: "
        "airline_reward for builtin:airline, else the environment's get_reward()).",
    )
    p.add_argument("--n", type=int, default=None, help="Evaluate only the first n tasks (default: all).")
    p.add_argument("--k", type=int, default=1, help="Sampled rollouts per task for pass^k.")
    p.add_argument(
        "--no_greedy",
        action="store_true",
        help="pass@1 from the sampled rollouts instead of one greedy rollout per task.",
    )
    p.add_argument(
        "--max_tool_calling_iterations",
        type=int,
        default=None,
        help="Tool-calling rounds per episode, as in training (default: the recipe's; without one "
        f"{H.max_tool_calls} on a GPU, {CPU_MAX_TOOL_CALLS} on CPU).",
    )
    p.add_argument(
        "--max_completion_length",
        type=int,
        default=None,
        help="Token budget of an episode after the prompt, tool tokens included, as in training (default: the "
        f"recipe's; without one {H.max_completion_length} on a GPU, {CPU_MAX_COMPLETION_LENGTH} on CPU).",
    )
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="Cap on one generation (default: none beyond the episode budget, as in training; without a recipe, "
        f"{CPU_MAX_NEW_TOKENS} on CPU).",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"Sampling temperature of the pass^k rollouts (default: {H.temperature}, or the recipe's).",
    )
    p.add_argument(
        "--top_p",
        type=float,
        default=None,
        help=f"Top-p of the pass^k rollouts (default: {H.top_p}, or the recipe's).",
    )
    p.add_argument(
        "--success_threshold", type=float, default=1.0, help="A rollout succeeds when its reward is >= this."
    )
    p.add_argument("--batch_size", type=int, default=8, help="Episodes generated together.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the builtin tasks and of the sampled rollouts.")
    p.add_argument(
        "--output", default=None, help="Write metrics and per-task records to this JSON file (default: print only)."
    )
    p.add_argument("--no_progress", action="store_true", help="Hide the progress bar over episodes.")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse, merge the recipe (`--config`) under the flags, and check every value. Raises [`UsageError`]."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = underscore_flags(argv, underscore_options(parser), prog=PROG)  # `--no-greedy`: deprecated
    args = parser.parse_args(argv)  # a malformed flag exits with argparse's own message and status 2
    recipe = _read_recipe(args.config) if args.config else {}
    for key in RECIPE_KEYS:
        if getattr(args, key) is None and key in recipe:
            setattr(args, key, recipe[key])
    args.dataset_name = args.dataset_name or BUILTIN_AIRLINE
    args.prompt_column = args.prompt_column or "prompt"
    args.reward_funcs = split_commas(args.reward_funcs)
    for flag, minimum in (
        ("n", 1),
        ("k", 1),
        ("batch_size", 1),
        ("max_tool_calling_iterations", 0),
        ("max_completion_length", 1),
        ("max_new_tokens", 1),
    ):
        value = getattr(args, flag)
        if value is not None and value < minimum:
            raise UsageError(f"--{flag} must be >= {minimum}, got {value}.")
    if args.temperature is not None and args.temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {args.temperature}.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}.")
    return args


def _read_recipe(path: str) -> dict:
    from .train import read_config_file

    return read_config_file(path)


def resolve_eval_model(name: str) -> str:
    """
    The folder (or Hub id) to load `--model` from, checked as `train` and `SGCDTrainer` check theirs
    ([`~trl_sgcd.tooluse.models.check_model_name`]: no Hub call for a local-looking path or under `HF_HUB_OFFLINE`);
    a builtin model is built here.

    Raises:
        [`UsageError`]: naming `--model`: an unknown builtin name, a missing folder, a folder without `config.json`.
    """
    return builtin_model_dir(resolve_model_name(name, field="--model"))


def load_tasks(args):
    """The evaluation rows (checked: split, prompt column, at least one row). Returns a `Dataset`."""
    if args.dataset_name == BUILTIN_AIRLINE:
        from trl_sgcd.envs.airline import make_airline_dataset

        if args.split not in ("train", "test"):
            raise UsageError(
                f"--split {args.split!r} is not a split of {BUILTIN_AIRLINE!r}; choose 'train' or 'test'."
            )
        return make_airline_dataset(args.split, seed=args.seed, n=args.n)
    splits = load_dataset_dict(args.dataset_name, args.dataset_config)
    dataset = checked_split(
        splits,
        args.split,
        field_name="--split",
        dataset_name=args.dataset_name,
        prompt_column=args.prompt_column,
        private_columns=[],
    )
    return dataset.select(range(min(args.n, len(dataset)))) if args.n else dataset


def resolve_rollout(args) -> tuple[Callable, Callable]:
    """`(environment_factory, reward_func)`: import paths, the airline defaults, or the environment's `get_reward`."""
    tau2 = resolve_env_spec(args.dataset_name) if str(args.dataset_name).startswith("tau2:") else None  # τ²-bench
    factory_path = args.environment_factory or (AIRLINE_ENV if args.dataset_name == BUILTIN_AIRLINE else None)
    factory_path = factory_path or (tau2.environment_path if tau2 else None)
    if factory_path is None:
        raise UsageError("--environment_factory is required for a dataset other than builtin:airline.")
    factory = load_callable(factory_path, what="environment_factory")
    paths = args.reward_funcs or ([AIRLINE_REWARD] if args.dataset_name == BUILTIN_AIRLINE else [])
    paths = paths or ([tau2.reward_path] if tau2 else [])
    funcs = [_verifier(load_callable(p, what="reward function"), p, factory) for p in paths]
    if not funcs:
        if not callable(getattr(factory(), "get_reward", None)):
            raise UsageError("No reward: pass --reward_funcs, or use an environment that defines get_reward().")
        return factory, _environment_reward
    return factory, _summed(funcs)


def _verifier(func: Callable, path: str, factory: Callable) -> Callable:
    """
    The environment's own verifier in place of a training-only reward (e.g. the tiny recipe's `scripted_sibling_reward`,
    which labels the first rollout of each task a success), said in one line; a training-only reward that names no
    verifier falls back to the environment's `get_reward()`, else is a [`UsageError`]. Other rewards pass unchanged.
    """
    from trl_sgcd.tooluse.evaluation import evaluation_reward

    verifier = evaluation_reward(func)
    if verifier is func:
        return func
    if verifier is None and callable(getattr(factory(), "get_reward", None)):
        verifier, name = _environment_reward, "the environment's get_reward()"
    elif verifier is None:
        raise UsageError(
            f"reward_funcs {path!r} is a training-only reward and no verifier is known for this environment: pass the "
            "environment's real reward with --reward_funcs."
        )
    else:
        name = f"{verifier.__module__}:{verifier.__qualname__}"
    log(f"eval: reward_funcs {path!r} is a training-only reward; scoring with the environment's verifier {name}.")
    return verifier


def _environment_reward(environments, **kwargs) -> list[float]:
    return [float(env.get_reward()) for env in environments]


def _summed(funcs: list[Callable]) -> Callable:
    """One reward function that sums several, as `GRPOTrainer` sums its `reward_funcs` (`None` counts as 0)."""
    if len(funcs) == 1:
        return funcs[0]

    def reward(**kwargs) -> list[float]:
        columns = [func(**kwargs) for func in funcs]
        return [sum(0.0 if r is None else float(r) for r in row) for row in zip(*columns, strict=True)]

    return reward


def harness(args, *, gpu: bool):
    """The [`RolloutHarness`] of this run: flags, else the recipe, else the paper's on a GPU (`gpu`) and the CPU one
    (`CPU_MAX_TOOL_CALLS`, `CPU_MAX_COMPLETION_LENGTH`) on CPU."""
    from trl_sgcd.tooluse.harness import PAPER_HARNESS, RolloutHarness

    default = PAPER_HARNESS
    if not gpu:
        default = RolloutHarness(
            max_tool_calls=CPU_MAX_TOOL_CALLS,
            max_completion_length=CPU_MAX_COMPLETION_LENGTH,
            temperature=PAPER_HARNESS.temperature,
            top_p=PAPER_HARNESS.top_p,
        )
    pick = {
        "max_tool_calls": args.max_tool_calling_iterations,
        "max_completion_length": args.max_completion_length,
        "temperature": args.temperature,
        "top_p": args.top_p,
    }
    return RolloutHarness(**{k: getattr(default, k) if v is None else v for k, v in pick.items()})


def max_new_tokens(args, *, gpu: bool) -> int | None:
    """`--max_new_tokens`, else `CPU_MAX_NEW_TOKENS` on CPU without a recipe, else none (as in training)."""
    if args.max_new_tokens is not None or gpu or args.config:
        return args.max_new_tokens
    return CPU_MAX_NEW_TOKENS


def print_result(result: dict, k: int) -> None:
    print(f"pass@1 {result['pass@1']:.3f}   pass^{k} {result['pass^k']:.3f}   ({result['num_tasks']} tasks)")
    for category, m in result["per_category"].items():
        print(f"  {category:<12} pass@1 {m['pass@1']:.3f}   pass^k {m['pass^k']:.3f}   n={m['num_tasks']}")
    audit = result["audit"]
    print(
        f"  zero-tool success share {audit['zero_tool_success_share']:.3f}   tools/success "
        f"{audit['tools_per_success']:.2f}   tool failure rate {audit['tool_failure_rate']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trl-sgcd eval`. Returns the exit status; [`UsageError`] propagates to the CLI."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    path = resolve_eval_model(args.model)
    dataset = load_tasks(args)
    factory, reward_func = resolve_rollout(args)
    check_environment_reset(factory, dataset, dataset_name=args.dataset_name)
    from trl_sgcd.import_utils import is_cuda_available

    gpu = is_cuda_available()
    run, new_tokens = harness(args, gpu=gpu), max_new_tokens(args, gpu=gpu)
    source = (
        "the recipe's"
        if args.config
        else "the paper's"
        if gpu
        else "CPU defaults; --config RECIPE.yaml for training's"
    )
    log(
        f"eval {args.model} on {len(dataset)} tasks of {args.dataset_name}:{args.split} | harness ({source}): "
        f"max_tool_calling_iterations={run.max_tool_calls} max_completion_length={run.max_completion_length} "
        f"max_new_tokens={new_tokens} temperature={run.temperature} top_p={run.top_p} k={args.k}"
    )
    quiet_known_noise()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import supports_tool_calling

    from trl_sgcd.tooluse.evaluation import evaluate, harness_kwargs

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not supports_tool_calling(tokenizer):
        raise UsageError(f"--model {args.model!r}: its chat template cannot render tool calls.")
    model = AutoModelForCausalLM.from_pretrained(path)
    result = evaluate(
        model,
        tokenizer,
        dataset,
        environment_factory=factory,
        reward_func=reward_func,
        k=args.k,
        greedy=not args.no_greedy,
        max_new_tokens=new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        success_threshold=args.success_threshold,
        **harness_kwargs(run),
    )
    print_result(result, args.k)
    if args.output:
        with open(args.output, "w") as f:
            harness_record = harness_kwargs(run) | {"max_new_tokens": new_tokens}
            json.dump(result | {"harness": harness_record, "model": args.model}, f, indent=1, default=str)
    return 0
