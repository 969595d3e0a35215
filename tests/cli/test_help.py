"""`--help` of `trl-sgcd train` and `trl-sgcd demo`, and `trl-sgcd train` with no arguments (subprocesses)."""

import dataclasses
import re

import pytest

from tests.cli.subprocesses import run_side_by_side
from trl_sgcd.config import SGCDConfig


@pytest.fixture(scope="module")
def runs():
    """`train --help`, `train` alone and `demo --help`, run side by side."""
    return run_side_by_side(
        {"train_help": ["train", "--help"], "train_bare": ["train"], "demo_help": ["demo", "--help"]}
    )


def help_of(out: str, flag: str) -> str:
    """The help paragraph argparse printed under `flag`, whitespace-normalised."""
    match = re.search(rf"^  {re.escape(flag)}\b(.*)\n((?: {{10,}}.*\n)*)", out, re.M)
    assert match, f"{flag} is not in the help output"
    same_line = re.search(r"\s{2,}(.*)", match.group(1))  # help after the flag and metavar, on the same line
    same_line = same_line.group(1) if same_line else ""
    return " ".join((same_line + match.group(2)).split())


def test_train_help_lists_config_first_then_the_credit_fields(runs):
    status, out, err, _ = runs["train_help"]
    assert status == 0, err
    assert out.startswith("usage: trl-sgcd train")
    assert "--config RECIPE.yaml" in out.split("\n\n")[0]  # the usage line
    assert "YAML recipe" in help_of(out, "--config RECIPE.yaml")
    headings = [line for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[:3] == ["options:", "SGCD credit settings (SGCDConfig, credit_*):", headings[2]]
    credit_block = out.split("SGCD credit settings")[1].split(headings[2])[0]
    credit = [f.name for f in dataclasses.fields(SGCDConfig) if f.name.startswith("credit_")]
    assert [name for name in credit if f"--{name} " not in credit_block and f"--{name}," not in credit_block] == []
    assert out.index("--credit_mode") < out.index("--dataset_name") < out.index("--learning_rate")
    for name in ("--dataset_name", "--environment_factory", "--reward_funcs", "--model_name_or_path", "--use_peft"):
        assert name in out


def test_train_help_is_the_full_docstring_and_reads_the_right_way_round(runs):
    _, out, _, _ = runs["train_help"]
    for name in ("credit_mode", "credit_observation_max_chars", "credit_log_table"):
        full = SGCDConfig.__dataclass_fields__[name].metadata["help"]
        squeeze = re.compile(r"\s+")  # argparse re-wraps (and breaks "self-distillation" after the hyphen)
        assert squeeze.sub("", full) in squeeze.sub("", help_of(out, f"--{name}")), name  # not a short one-liner
    off = help_of(out, "--no_credit_log_table")
    assert off.startswith("Turn --credit_log_table off") and "default" not in off


def test_train_without_arguments_asks_for_a_recipe_or_a_model(runs):
    status, out, err, elapsed = runs["train_bare"]
    assert status == 2
    assert "needs a recipe or a model" in err and "--config" in err and "--model_name_or_path" in err
    assert "bf16" not in err and "Traceback" not in err


def test_demo_help_documents_every_flag(runs):
    from trl_sgcd.demo.run import _parser

    status, out, err, _ = runs["demo_help"]
    assert status == 0, err
    flags = [a.option_strings[-1] for a in _parser()._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 20
    undocumented = [flag for flag in flags if len(help_of(out, flag)) < 15]
    assert undocumented == []
    assert "(full: 24, quick: 6)" in help_of(out, "--sft_steps")  # the profile values, read from the code
