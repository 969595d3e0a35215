"""Helpers of the `trl-sgcd` scripts: import paths, datasets and model names, all resolved before any model loads.

Everything here raises [`UsageError`] (a `ValueError`) with a message that names the offending value, so that the
command line can print it without a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from trl_sgcd.tooluse.models import (  # noqa: F401 - re-exported: the model names live in the library
    BUILTIN_MODELS,
    DEPRECATED_MODEL_NAMES,
    builtin_model_dir,
    check_model_name,
)

BUILTIN_AIRLINE = "builtin:airline"
AIRLINE_ENV = "trl_sgcd.envs.airline:AirlineEnv"  # the environment and reward of builtin:airline (train and eval)
AIRLINE_REWARD = "trl_sgcd.envs.airline:airline_reward"
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class UsageError(ValueError):
    """A mistake in a recipe or on the command line (bad field, import path, dataset or column)."""


def log(message: str) -> None:
    """Print a `[trl-sgcd]` line on the main process only (rank 0), before accelerate is set up."""
    if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"[trl-sgcd] {message}", file=sys.stderr, flush=True)


def quiet_known_noise() -> None:
    """
    Silence, for the command's process (`train`, `eval`, `demo`; never at import, so the Python API warns as usual),
    messages a command-line user can do nothing about: TRL's "environment_factory is experimental" warning (the
    command's documented way to train with an environment), torch's "pin_memory ... no accelerator" warning (the
    Trainer's default `dataloader_pin_memory=True` on a CPU-only machine, harmless there) and DeepSpeed's "Setting
    accelerator to CPU" line on a machine without a GPU (the right fallback, said on every run).
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="You are using 'environment_factory'", category=UserWarning)
    warnings.filterwarnings(
        "ignore", message=".*'pin_memory' argument is set as true but no accelerator", category=UserWarning
    )

    class _NoCpuFallbackLine(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.getMessage()).startswith("Setting accelerator to CPU")

    logging.getLogger("DeepSpeed").addFilter(_NoCpuFallbackLine())


def load_object(path: str, *, what: str = "object"):
    """
    Import an object from an import path.

    Args:
        path (`str`):
            `"package.module:Name"` (preferred; `Name` may be dotted, e.g. `"pkg.mod:Class.method"`) or the dotted form
            `"package.module.Name"`. The current directory is importable, so a local `my_rewards.py` works.
        what (`str`, *optional*, defaults to `"object"`):
            What the object is for (e.g. `"reward function"`), used in error messages.

    Returns:
        The imported object.

    Raises:
        [`UsageError`]: naming `path` and what went wrong (malformed path, module not found, attribute missing).
    """
    if not isinstance(path, str) or not path.strip():
        raise UsageError(f"Invalid {what} import path {path!r}: expected 'package.module:Name'.")
    module_name, sep, attr_path = path.strip().partition(":")
    if not sep:
        module_name, _, attr_path = module_name.rpartition(".")
    if not module_name or not attr_path:
        raise UsageError(f"Invalid {what} import path {path!r}: expected 'package.module:Name'.")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"Cannot import {what} {path!r}: importing module {module_name!r} failed ({e}).") from e
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise UsageError(
                f"Cannot import {what} {path!r}: {getattr(obj, '__name__', obj)!r} has no attribute {attr!r}."
            )
        obj = getattr(obj, attr)
    return obj


def load_callable(path: str, *, what: str):
    """[`load_object`], then check that the object is callable."""
    obj = load_object(path, what=what)
    if not callable(obj):
        raise UsageError(f"The {what} {path!r} is a {type(obj).__name__}, not a callable.")
    return obj


def resolve_model_name(name: str | None, *, field: str = "model_name_or_path", warn=log) -> str:
    """
    [`~trl_sgcd.tooluse.models.check_model_name`] for the command line: the same one-line message as the Python API,
    raised as a [`UsageError`]; a deprecated builtin spelling is said in one `[trl-sgcd]` line. Returns the name to
    load (builtin names are built later, by [`builtin_model_dir`], because building them takes time).
    """
    try:
        return check_model_name(name, field=field, warn=warn)
    except ValueError as e:
        raise UsageError(str(e)) from e


def load_dataset_dict(name: str, config: str | None = None):
    """
    Load a dataset as a `DatasetDict`.

    Args:
        name (`str`):
            A local `.json`/`.jsonl`/`.csv`/`.parquet` file, a local folder (data files, or a `save_to_disk` folder), a
            Hub dataset name, or `"builtin:airline"` (the bundled mini-airline tasks, splits `train` and `test`).
        config (`str`, *optional*):
            Dataset configuration name (`name=` of [`~datasets.load_dataset`]); ignored for local files.
    """
    from datasets import DatasetDict, load_dataset, load_from_disk

    if name == BUILTIN_AIRLINE:
        return _AirlineSplits()
    if name.startswith("tau2:"):  # τ²-bench: trl_sgcd.envs.tau2.resolve
        return resolve_env_spec(name).splits
    path = os.path.expanduser(name)
    ext = os.path.splitext(path)[1].lower()
    try:
        if os.path.isfile(path):
            if ext not in DATA_FILE_BUILDERS:
                raise UsageError(
                    f"dataset_name={name!r}: unsupported file type {ext!r}; use one of {sorted(DATA_FILE_BUILDERS)}."
                )
            check_data_file(path, name)
            return load_dataset(DATA_FILE_BUILDERS[ext], data_files=path)
        if os.path.isdir(path) and _is_saved_to_disk(path):
            loaded = load_from_disk(path)
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
        if name.startswith("builtin:"):
            raise UsageError(f"dataset_name={name!r} is not a builtin dataset; the only one is {BUILTIN_AIRLINE!r}.")
        if name.startswith((".", "/", "~")) and not os.path.exists(path):
            raise UsageError(f"dataset_name={name!r}: no such file or folder.")
        return load_dataset(path, name=config)
    except UsageError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError...)
        raise UsageError(f"Cannot load dataset_name={name!r}: {type(e).__name__}: {e}") from e


def check_data_file(path: str, name: str) -> None:
    """An empty file, or a JSON / JSONL file with a line that does not parse, is a [`UsageError`] naming the line."""
    import json

    if os.path.getsize(path) == 0:
        raise UsageError(f"dataset_name={name!r} is an empty file.")
    if not path.lower().endswith((".json", ".jsonl")):
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        try:
            json.loads(text)  # one JSON document (a list of rows, or a dict of columns)
            return
        except json.JSONDecodeError:
            pass  # JSON lines under a .json name: check line by line
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise UsageError(f"dataset_name={name!r} is an empty file (only whitespace).")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"dataset_name={name!r}: line {number} is not valid JSON ({e.msg}): {line[:80]!r}") from e
        if not isinstance(row, dict):
            raise UsageError(f"dataset_name={name!r}: line {number} is a {type(row).__name__}, not a JSON object.")


def resolve_env_spec(spec: str):
    """A `"tau2:<domain>[:<user_mode>]"` spec -> its `Tau2Spec` (environment_factory, reward_funcs, private_columns,
    splits), or a [`UsageError`] naming the spec."""
    from trl_sgcd.envs.tau2 import resolve

    try:
        return resolve(spec)
    except (ValueError, ImportError) as e:
        raise UsageError(f"{spec!r}: {e}") from e


def _is_saved_to_disk(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


class _AirlineSplits:
    """Lazy `{split: Dataset}` view of the builtin airline tasks (`trl_sgcd.envs.airline.make_airline_dataset`)."""

    def __getitem__(self, split: str):
        from trl_sgcd.envs.airline import make_airline_dataset

        try:
            return make_airline_dataset(split)
        except (KeyError, ValueError) as e:
            raise UsageError(f"dataset_name={BUILTIN_AIRLINE!r} has no split {split!r} ({e}).") from e

    def __contains__(self, split: str) -> bool:
        return True

    def keys(self):
        return ["train", "test"]


def get_split(dataset_dict, split: str, *, field_name: str, dataset_name: str):
    """`dataset_dict[split]`, or a [`UsageError`] naming the split, the field that asked for it and the splits there."""
    if split not in dataset_dict:
        raise UsageError(
            f"{field_name}={split!r} is not a split of dataset_name={dataset_name!r}; available splits: "
            f"{list(dataset_dict.keys())}."
        )
    try:
        return dataset_dict[split]
    except UsageError as e:
        raise UsageError(f"{field_name}={split!r}: {e}") from e


def checked_split(
    dataset_dict, split: str, *, field_name: str, dataset_name: str, prompt_column: str, private_columns: list[str]
):
    """[`get_split`], then [`check_columns`]: one split, its columns checked and its prompt column named `"prompt"`."""
    dataset = get_split(dataset_dict, split, field_name=field_name, dataset_name=dataset_name)
    return check_columns(
        dataset, prompt_column=prompt_column, private_columns=private_columns, dataset_name=dataset_name
    )


def check_columns(dataset, *, prompt_column: str, private_columns: list[str], dataset_name: str):
    """
    Check the columns a run needs and rename `prompt_column` to `"prompt"` (what `GRPOTrainer` reads).

    Raises:
        [`UsageError`]: naming the missing column and the field that asked for it.
    """
    columns = list(dataset.column_names or [])
    if prompt_column not in columns:
        raise UsageError(
            f"prompt_column={prompt_column!r} is not a column of dataset_name={dataset_name!r}; columns: {columns}."
        )
    missing = [c for c in private_columns if c not in columns]
    if missing:
        raise UsageError(
            f"credit_private_columns entries {missing} are not columns of dataset_name={dataset_name!r}; "
            f"columns: {columns}."
        )
    if len(dataset) == 0:
        raise UsageError(f"dataset_name={dataset_name!r} has no rows in this split.")
    for number, prompt in enumerate(dataset[prompt_column], start=1):
        problem = prompt_problem(prompt)
        if problem:
            raise UsageError(
                f"prompt_column={prompt_column!r}, row {number} of dataset_name={dataset_name!r}: {problem}; a prompt "
                "is a string or a list of chat messages ({'role': ..., 'content': ...})."
            )
    if prompt_column != "prompt":
        if "prompt" in columns:
            raise UsageError(
                f"prompt_column={prompt_column!r} but the dataset also has a 'prompt' column; rename one."
            )
        dataset = dataset.rename_column(prompt_column, "prompt")
    return dataset


def prompt_problem(prompt) -> str | None:
    """What is wrong with one prompt value (`None` if it is a non-empty string or a list of chat messages)."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "the prompt is an empty string"
    if not isinstance(prompt, list) or not prompt:
        return f"the prompt is {type(prompt).__name__} {str(prompt)[:60]!r}"
    for message in prompt:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"a message is {str(message)[:60]!r}, not a dict with 'role' and 'content'"
    return None


def check_environment_reset(environment_factory, dataset, *, dataset_name: str) -> None:
    """
    Build one environment and call `reset(**row)` on the dataset's first row, as `GRPOTrainer` does before a rollout,
    so that a column the environment needs (e.g. `task_id`) is reported before any model loads.

    Raises:
        [`UsageError`]: naming the environment, the dataset, its columns and the error `reset` raised.
    """
    if environment_factory is None or dataset is None or len(dataset) == 0:
        return
    name = getattr(environment_factory, "__name__", None) or getattr(
        getattr(environment_factory, "func", None), "__name__", repr(environment_factory)
    )
    try:
        environment_factory().reset(**dict(dataset[0]))
    except Exception as e:  # noqa: BLE001 - any failure here would fail the first rollout after the model loads
        raise UsageError(
            f"environment_factory {name}.reset(**row) fails on row 1 of dataset_name={dataset_name!r} "
            f"(columns: {list(dataset.column_names)}): {type(e).__name__}: {e}"
        ) from e


def underscore_flags(argv: list[str], known: set[str], *, prog: str) -> list[str]:
    """
    One flag style for every command, TRL's: a hyphenated spelling of a known flag (`--output-dir`, `--no-greedy`,
    `--credit-mode=off`) becomes its underscore spelling (`--output_dir` ...), with one `[trl-sgcd]` line naming each
    old spelling. Values and unknown flags pass unchanged (the parser reports those).
    """
    out, renamed = [], []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag.startswith("--") and "-" in flag[2:]:
            new = "--" + flag[2:].replace("-", "_")
            if new in known:
                renamed.append(f"{flag} (write {new})")
                arg = new + eq + value
        out.append(arg)
    if renamed:
        log(
            f"{prog}: deprecated flag spelling {', '.join(renamed)}; flags use underscores, as in TRL, and the "
            "hyphenated spellings will be removed."
        )
    return out


def underscore_options(parser) -> set[str]:
    """The `--flag` strings of an argparse parser that are in TRL's style (no hyphen after the leading `--`)."""
    return {o for o in parser._option_string_actions if o.startswith("--") and "-" not in o[2:]}


def split_commas(values: list[str] | str | None) -> list[str]:
    """`["a,b", "c"]` or `"a,b,c"` -> `["a", "b", "c"]`: list fields given as one comma-separated CLI string."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]
