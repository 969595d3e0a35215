"""Helpers of the `trl-sgcd` scripts: import paths, datasets and model names, all resolved before any model loads.

Everything here raises [`UsageError`] (a `ValueError`) with a message that names the offending value, so that the
command line can print it without a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

BUILTIN_AIRLINE = "builtin:airline"
BUILTIN_MODELS = {
    "builtin:smollm2": "bundled_model_dir",
    "builtin:tiny": "tiny_model_dir",
    "builtin:tiny-context": "tiny_context_model_dir",
}
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class UsageError(ValueError):
    """A mistake in a recipe or on the command line (bad field, import path, dataset or column)."""


def log(message: str) -> None:
    """Print a `[trl-sgcd]` line on the main process only (rank 0), before accelerate is set up."""
    if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"[trl-sgcd] {message}", file=sys.stderr, flush=True)


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


def resolve_model_name(name: str | None) -> str:
    """
    Check a `model_name_or_path` without loading anything. Returns it unchanged (builtin names are resolved later, by
    [`builtin_model_dir`], because building them takes time).
    """
    if not name:
        raise UsageError(
            f"model_name_or_path is required (a Hub id, a local folder, or one of {sorted(BUILTIN_MODELS)})."
        )
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            raise UsageError(
                f"model_name_or_path={name!r} is not a builtin model; choose one of {sorted(BUILTIN_MODELS)}."
            )
        return name
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1  # a Hub id is "org/name"
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise UsageError(f"model_name_or_path={name!r} looks like a local path but is not a folder.")
    return name


def builtin_model_dir(name: str) -> str:
    """Folder of a builtin model (`builtin:smollm2` -> the bundled SmolLM2, `builtin:tiny` -> the tiny random Llama)."""
    if name not in BUILTIN_MODELS:
        return os.path.expanduser(name) if name.startswith("~") else name
    from trl_sgcd.tooluse import models

    return getattr(models, BUILTIN_MODELS[name])()


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
    path = os.path.expanduser(name)
    ext = os.path.splitext(path)[1].lower()
    try:
        if os.path.isfile(path):
            if ext not in DATA_FILE_BUILDERS:
                raise UsageError(
                    f"dataset_name={name!r}: unsupported file type {ext!r}; use one of {sorted(DATA_FILE_BUILDERS)}."
                )
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
    if prompt_column != "prompt":
        if "prompt" in columns:
            raise UsageError(
                f"prompt_column={prompt_column!r} but the dataset also has a 'prompt' column; rename one."
            )
        dataset = dataset.rename_column(prompt_column, "prompt")
    return dataset


def split_commas(values: list[str] | str | None) -> list[str]:
    """`["a,b", "c"]` or `"a,b,c"` -> `["a", "b", "c"]`: list fields given as one comma-separated CLI string."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]
