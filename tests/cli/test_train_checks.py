"""`trl-sgcd train` fails before the model loads: resume and push, and datasets (empty file, malformed JSONL line,
prompts that are not strings or message lists, a column the environment's `reset` needs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_sgcd import cli
from trl_sgcd.cli import train as train_script

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "tiny_cpu.yaml")


@pytest.fixture
def no_model(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(train_script, "build_trainer", forbidden)


def cli_train(capsys, *args: str) -> tuple[int, str]:
    status = cli.main(["train", "--config", TINY, *args])
    return status, capsys.readouterr().err


# --- resume ----------------------------------------------------------------------------------------------------------


def test_resume_latest_without_a_checkpoint(tmp_path, capsys, no_model):
    status, err = cli_train(capsys, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "true")
    assert status == 2 and "no checkpoint-* folder" in err and str(tmp_path) in err


def test_resume_from_a_bad_path(tmp_path, capsys, no_model):
    status, err = cli_train(capsys, "--resume_from_checkpoint", str(tmp_path / "checkpoint-9"))
    assert status == 2 and "no such folder" in err and "checkpoint-9" in err
    (tmp_path / "model_only").mkdir()
    (tmp_path / "model_only" / "config.json").write_text("{}")
    status, err = cli_train(capsys, "--resume_from_checkpoint", str(tmp_path / "model_only"))
    assert status == 2 and "trainer_state.json" in err


def test_resume_from_a_real_checkpoint_passes(tmp_path, capsys, no_model):
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    status, err = cli_train(capsys, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest", "--dry_run")
    assert status == 0, err


# --- push --------------------------------------------------------------------------------------------------------


def test_push_without_a_token(tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token either
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    status, err = cli_train(capsys, "--push_to_hub", "true", "--hub_model_id", "me/run")
    assert status == 2 and "needs a Hub token" in err


def test_push_while_offline(capsys, monkeypatch, no_model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, err = cli_train(capsys, "--push_to_hub", "true", "--hub_model_id", "me/run", "--hub_token", "hf_x")
    assert status == 2 and "HF_HUB_OFFLINE" in err


def test_push_with_an_unreachable_endpoint(capsys, monkeypatch, no_model):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    status, err = cli_train(capsys, "--push_to_hub", "true", "--hub_model_id", "me/run", "--hub_token", "hf_x")
    assert status == 2 and "cannot reach http://127.0.0.1:9" in err


# --- datasets ------------------------------------------------------------------------------------------------------


def test_empty_dataset_file(tmp_path, capsys, no_model):
    (tmp_path / "d.jsonl").write_text("")
    status, err = cli_train(capsys, "--dataset_name", str(tmp_path / "d.jsonl"))
    assert status == 2 and "is an empty file" in err


def test_malformed_jsonl_line_is_named(tmp_path, capsys, no_model):
    good = json.dumps({"prompt": "a", "task_id": "airline-test-000", "gold_actions": "[]", "gold_answer": "[]"})
    (tmp_path / "d.jsonl").write_text(f"{good}\n\n{good}\n{{'prompt': 'single quotes'}}\n")
    status, err = cli_train(capsys, "--dataset_name", str(tmp_path / "d.jsonl"))
    assert status == 2 and "line 4 is not valid JSON" in err  # 1-based, blank lines counted


def test_prompt_that_is_neither_text_nor_messages(tmp_path, capsys, no_model):
    rows = [
        {"prompt": "fine", "gold_actions": "[]", "gold_answer": "[]"},
        {"prompt": [{"text": "no role"}], "gold_actions": "[]", "gold_answer": "[]"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status, err = cli_train(capsys, "--dataset_name", str(tmp_path / "d.jsonl"))
    assert status == 2 and "row 2" in err and "'role'" in err


def test_column_the_environment_reset_needs(tmp_path, capsys, no_model):
    rows = [{"prompt": "Book me a flight.", "gold_actions": "[]", "gold_answer": "[]"}]  # no task_id
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status, err = cli_train(capsys, "--dataset_name", str(tmp_path / "d.jsonl"))
    assert status == 2 and "AirlineEnv.reset(**row) fails on row 1" in err and "task_id" in err


def test_dataset_errors_come_before_the_model_subprocess(tmp_path):
    """The real command: the error and exit status 2, and the model is never loaded."""
    (tmp_path / "d.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "trl_sgcd", "train", "--config", TINY, "--dataset_name", str(tmp_path / "d.jsonl")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "line 2 is not valid JSON" in result.stderr and "Loading tokenizer and model" not in result.stderr


# --- scripted sibling ------------------------------------------------------------------------------------------------
def test_bad_scripted_sibling_path_fails_before_the_model(capsys, no_model):
    status, err = cli_train(capsys, "--scripted_sibling", "trl_sgcd.envs.scripted:no_such_script")
    assert status != 0 and "scripted_sibling 'trl_sgcd.envs.scripted:no_such_script'" in err, err


def test_scripted_sibling_reaches_the_trainer(capsys, monkeypatch, tmp_path):
    from trl_sgcd.envs.scripted import airline_expert_script

    seen = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise SystemExit(0)

    monkeypatch.setattr("trl_sgcd.trainer.SGCDTrainer", Recorder)
    with pytest.raises(SystemExit):
        cli_train(
            capsys, "--output_dir", str(tmp_path), "--scripted_sibling", "trl_sgcd.envs.scripted:airline_expert_script"
        )
    assert seen["scripted_sibling"] is airline_expert_script
    assert "scripted_sibling=airline_expert_script" in capsys.readouterr().err
