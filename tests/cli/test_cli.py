"""The `trl-sgcd` command: version, help, dispatch, and fail-fast validation before any model loads.

The end-to-end tests (`-m slow`) run `python -m trl_sgcd train --config recipes/tiny_cpu.yaml --max_steps 1`, in one
process and in two (DDP, DeepSpeed ZeRO-3) with the CPU accelerate configs of `recipes/accelerate/`.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import trl_sgcd
from trl_sgcd import cli
from trl_sgcd.cli import train as train_script
from trl_sgcd.cli.utils import UsageError, load_callable, load_dataset_dict, load_object, split_commas
from trl_sgcd.import_utils import is_deepspeed_available

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "tiny_cpu.yaml")
MODEL_MESSAGE = "Loading tokenizer and model"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trl_sgcd", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV
    )


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to build the trainer (which loads the model)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(train_script, "build_trainer", forbidden)


def cli_train(capsys, *args: str) -> tuple[int, str]:
    status = cli.main(["train", "--config", TINY, *args])
    return status, capsys.readouterr().err


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# --- subprocesses: the real command ------------------------------------------------------------------------------


def test_version_subprocess():
    script = Path(sys.executable).parent / "trl-sgcd"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "trl_sgcd"]
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith(f"trl-sgcd {trl_sgcd.__version__}") and "trl 1.16" in result.stdout


def test_bad_import_path_fails_fast_subprocess():
    start = time.monotonic()
    result = run_cli("train", "--config", TINY, "--reward_funcs", "no_such_pkg.rewards:score")
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert "no_such_pkg.rewards:score" in result.stderr and "No module named 'no_such_pkg'" in result.stderr
    assert MODEL_MESSAGE not in result.stderr
    assert elapsed < 45  # imports only (~5 s alone on 2 cores); building the trainer would take far longer
    # `train --help` (every credit field listed): tests/cli/test_help.py


# --- in process: the same code path, without paying the interpreter start each time -------------------------------


def test_dispatcher_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0 and "train" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert cli.main(["trian"]) == 2 and "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command, module", [("eval", "trl_sgcd.cli.eval"), ("demo", "trl_sgcd.demo.run")])
def test_eval_and_demo_dispatch_lazily(monkeypatch, command, module):
    calls = []
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(main=lambda argv: calls.append(argv) or 0))
    assert cli.main([command, "--foo", "1"]) == 0
    assert calls == [["--foo", "1"]]


def test_missing_subcommand_module_gives_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "demo", ("trl_sgcd.no_such_demo_module", "demo"))
    assert cli.main(["demo"]) == 2
    assert "trl_sgcd.no_such_demo_module:main" in capsys.readouterr().err


def test_unknown_cli_field_names_it(capsys, no_model):
    status, err = cli_train(capsys, "--credit_gama", "2")
    assert status == 2 and "'credit_gama'" in err and "did you mean 'credit_gamma'" in err


def test_unknown_yaml_field_names_it(tmp_path, capsys, no_model):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("credit_mdoe: sgcd\nuse_cpu: true\n")
    assert cli.main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "'credit_mdoe'" in err and "did you mean 'credit_mode'" in err and str(recipe) in err


def test_bare_yaml_off_gets_a_hint(tmp_path, capsys, no_model):
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("credit_mode: off\n")
    assert cli.main(["train", "--config", str(recipe)]) == 2
    assert 'credit_mode: "off"' in capsys.readouterr().err


def test_invalid_value_names_the_field(capsys, no_model):
    status, err = cli_train(capsys, "--credit_cap", "1")
    assert status == 2 and "credit_cap" in err


def test_missing_prompt_column_names_it(tmp_path, capsys, no_model):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "gold_actions": "[]", "gold_answer": "[]"}])
    status, err = cli_train(capsys, "--dataset_name", data)
    assert status == 2 and "prompt_column='prompt'" in err and "question" in err


def test_missing_private_column_names_it(tmp_path, capsys, no_model):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "gold_answer": "[]"}])
    status, err = cli_train(capsys, "--dataset_name", data)
    assert status == 2 and "gold_actions" in err and "credit_private_columns" in err


def test_missing_split_names_it(capsys, no_model):
    status, err = cli_train(capsys, "--dataset_train_split", "validation")
    assert status == 2 and "dataset_train_split='validation'" in err


def test_old_flag_spellings_still_parse_with_a_deprecation_line(capsys):
    _, training_args, _ = train_script.parse_args(["--config", TINY, "--output-dir", "o", "--credit-mode", "off"])
    assert (training_args.output_dir, training_args.credit_mode) == ("o", "off")
    err = capsys.readouterr().err
    assert "--output-dir (write --output_dir), --credit-mode (write --credit_mode)" in err
    help_flags = [o for a in train_script.make_parser()._actions for o in a.option_strings if o.startswith("--")]
    assert "--output_dir" in help_flags and [o for o in help_flags if "-" in o[2:]] == []  # --help: one style


def test_a_missing_model_path_fails_before_the_arguments_are_parsed(tmp_path, capsys, monkeypatch):
    """The flag's or the recipe's model path is checked on the raw arguments, before TrlParser (TRL's ~5 s import)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model path must be checked before the arguments are parsed")

    monkeypatch.setattr(train_script, "parse_args", forbidden)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--config", TINY, "--model_name_or_path=./no_such_model"]) == 2
    assert "model_name_or_path='./no_such_model': no such folder" in capsys.readouterr().err
    (tmp_path / "recipe.yaml").write_text("model_name_or_path: /no/such/model\n")
    assert cli.main(["train", "--config", "recipe.yaml"]) == 2
    assert "model_name_or_path='/no/such/model': no such folder" in capsys.readouterr().err


def test_unknown_builtin_model_names_it(capsys, no_model):
    status, err = cli_train(capsys, "--model_name_or_path", "builtin:gpt5")
    assert status == 2 and "builtin:gpt5" in err


def test_local_jsonl_dataset_passes_validation(tmp_path, capsys, no_model):
    rows = [  # task_id: the airline environment's reset needs it (called on the first row before the model loads)
        {
            "question": [{"role": "user", "content": f"task {i}"}],
            "task_id": f"airline-test-00{i}",
            "gold_actions": "[]",
            "gold_answer": "[]",
        }
        for i in range(3)
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    status, err = cli_train(capsys, "--dataset_name", data, "--prompt_column", "question", "--dry_run")
    assert status == 0, err
    assert "Checks passed" in err and "train: 3 prompts" in err and MODEL_MESSAGE not in err
    args = train_script.parse_args(["--config", TINY, "--dataset_name", data, "--prompt_column", "question"])
    plan = train_script.prepare(*args)
    assert plan.train_dataset.column_names[0] == "prompt" and "question" not in plan.train_dataset.column_names


def test_local_csv_parquet_and_folder_load(tmp_path):
    from datasets import Dataset

    dataset = Dataset.from_dict({"prompt": ["a", "b"], "gold_answer": ["x", "y"]})
    dataset.to_csv(str(tmp_path / "d.csv"))
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for name in ("d.csv", "d.parquet", "saved"):
        assert load_dataset_dict(str(tmp_path / name))["train"]["prompt"] == ["a", "b"], name
    with pytest.raises(UsageError, match=r"\.txt"):
        (tmp_path / "d.txt").write_text("x")
        load_dataset_dict(str(tmp_path / "d.txt"))
    with pytest.raises(UsageError, match="no such file"):
        load_dataset_dict("./missing.jsonl")


def test_load_object_forms_and_errors():
    assert load_object("os.path:join") is os.path.join
    assert load_object("os.path.join") is os.path.join
    assert load_object("trl_sgcd.cli.train:SGCDScriptArguments.__name__") == "SGCDScriptArguments"
    with pytest.raises(UsageError, match="'nopath'.*package.module:Name"):
        load_object("nopath")
    with pytest.raises(UsageError, match="'no_such_pkg:f'.*No module named 'no_such_pkg'"):
        load_object("no_such_pkg:f")
    with pytest.raises(UsageError, match="'os.path:nope'.*has no attribute 'nope'"):
        load_object("os.path:nope")
    with pytest.raises(UsageError, match="'os:sep' is a str, not a callable"):
        load_callable("os:sep", what="tool")


def test_load_object_imports_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_for_test.py").write_text(
        "def score(completions, **kw):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_callable("my_rewards_for_test:score", what="reward function")(["a"]) == [1.0]


def test_list_fields_accept_commas():
    assert split_commas(["a,b", "c"]) == ["a", "b", "c"]
    assert split_commas("a, b") == ["a", "b"] and split_commas(None) == []


def test_litellm_key_is_checked_before_loading(capsys, monkeypatch, no_model):
    monkeypatch.delenv("SGCD_TEST_KEY", raising=False)
    status, err = cli_train(
        capsys,
        "--credit_reference_backend",
        "litellm",
        "--credit_reference_model",
        "openai/x",
        "--credit_reference_api_key_env",
        "SGCD_TEST_KEY",
    )
    assert status == 2 and "SGCD_TEST_KEY" in err
    from trl_sgcd import SGCDConfig

    with pytest.raises(ValueError) as api:  # the Python API says the same thing
        SGCDConfig(
            output_dir="unused",
            use_cpu=True,
            bf16=False,
            credit_reference_backend="litellm",
            credit_reference_model="openai/x",
            credit_reference_api_key_env="SGCD_TEST_KEY",
        )
    assert str(api.value) in err
    monkeypatch.setenv("SGCD_TEST_KEY", "sk-test")  # set: both accept it (the unset-variable rule is one rule)
    status, err = cli_train(
        capsys,
        "--credit_reference_backend",
        "litellm",
        "--credit_reference_model",
        "openai/x",
        "--credit_reference_api_key_env",
        "SGCD_TEST_KEY",
        "--dry_run",
    )
    assert status == 0 or "needs litellm" in err, err


def test_resume_argument():
    assert train_script._resume_arg("true") is True and train_script._resume_arg("latest") is True
    assert train_script._resume_arg("out/checkpoint-5") == "out/checkpoint-5"
    assert train_script._resume_arg(None) is None


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_tiny_recipe_end_to_end(tmp_path):
    """`python -m trl_sgcd train --config recipes/tiny_cpu.yaml --max_steps 1`: one real SGCD step, then save."""
    result = run_cli("train", "--config", TINY, "--max_steps", "1", "--output_dir", str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert MODEL_MESSAGE in result.stderr
    assert (tmp_path / "config.json").is_file()
    assert any(p.suffix == ".safetensors" for p in tmp_path.iterdir())


def launch_two_processes(accelerate_config: str, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / accelerate_config),
        "-m",
        "trl_sgcd",
        "train",
        "--config",
        TINY,
        "--max_steps",
        "1",
        "--output_dir",
        str(output_dir),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_train_tiny_recipe_two_process_ddp(tmp_path):
    result = launch_two_processes("cpu_2proc_ddp.yaml", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(not is_deepspeed_available() or shutil.which("g++") is None, reason="needs deepspeed and g++")
def test_train_tiny_recipe_two_process_zero3(tmp_path):
    result = launch_two_processes("cpu_2proc_zero3.yaml", tmp_path, "--use_cpu", "false", "--ddp_backend", "gloo")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "model.safetensors").is_file()  # zero3_save_16bit_model gathers the full weights


@pytest.mark.slow
def test_train_resumes_from_checkpoint(tmp_path):
    """Step 1 saves checkpoint-1; `--resume_from_checkpoint true` picks it up and continues to step 2."""
    common = [
        "train",
        "--config",
        TINY,
        "--output_dir",
        str(tmp_path),
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
    ]
    first = run_cli(*common, "--max_steps", "1", timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (tmp_path / "checkpoint-1").is_dir()
    second = run_cli(*common, "--max_steps", "2", "--resume_from_checkpoint", "true", timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "missing keys" not in second.stderr  # the tied lm_head.weight is not saved, and that is harmless
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and len([h for h in state["log_history"] if "loss" in h]) == 2
