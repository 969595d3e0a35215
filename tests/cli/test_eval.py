"""`trl-sgcd eval`: usage errors before any model loads (subprocesses), every flag documented, any environment and
dataset the way `train` takes them, the training harness, and a real run of the tiny model with a progress bar."""

import json
from pathlib import Path

import pytest

from tests.cli.subprocesses import run_side_by_side
from trl_sgcd.cli import eval as eval_script
from trl_sgcd.cli.utils import UsageError
from trl_sgcd.tooluse.harness import PAPER_HARNESS

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = str(ROOT / "recipes" / "tiny_cpu.yaml")

ENV_MODULE = '''
class EchoEnv:
    """Rewards 1 once `echo` has been called with the task's word."""

    def reset(self, word, **kwargs):
        self.word, self.said = word, None

    def echo(self, text: str) -> str:
        """Say a word.

        Args:
            text: The word.
        """
        self.said = text
        return text

    def get_reward(self) -> float:
        return float(self.said == self.word)
'''


@pytest.fixture(scope="module")
def usage_runs():
    """Three bad command lines, run side by side: each must fail with a usage error before loading anything."""
    commands = {
        "missing_model": ["--model", "outputs/no_such_run"],
        "bad_split": ["--model", "builtin:tiny", "--split", "validation"],
        "zero_n": ["--model", "builtin:tiny", "--n", "0"],
    }
    return run_side_by_side({key: ["eval", *args] for key, args in commands.items()})


@pytest.mark.parametrize(
    "key, needle",
    [("missing_model", "--model='outputs/no_such_run'"), ("bad_split", "--split 'validation'"), ("zero_n", "--n")],
)
def test_bad_arguments_are_usage_errors(usage_runs, key, needle):
    status, _, err, _ = usage_runs[key]
    assert status == 2, err
    assert needle in err and "Traceback" not in err and "Loading weights" not in err


def test_missing_model_is_never_a_hub_lookup(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("no Hub call for a local-looking path")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", forbidden)
    with pytest.raises(UsageError, match="--model='./typo': no such folder"):
        eval_script.resolve_eval_model("./typo")
    with pytest.raises(UsageError, match="not a builtin model"):
        eval_script.resolve_eval_model("builtin:gpt5")


def test_help_says_to_pass_the_recipe_and_states_the_cpu_defaults():
    text = " ".join(eval_script._parser().format_help().split())
    assert "Pass the training recipe with --config RECIPE.yaml" in text
    assert "(3 rounds, 2048 tokens, 128 new tokens per turn)" in text
    assert "without one 16 on a GPU, 3 on CPU" in text and "without one 16384 on a GPU, 2048 on CPU" in text
    assert "128 on CPU" in text


def test_every_flag_has_help_and_a_default():
    parser = eval_script._parser()
    text = " ".join(parser.format_help().split("options:", 1)[1].split())
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 15, action.dest
        block = text.split(action.option_strings[0] + " ", 1)[1].split(" --", 1)[0]
        assert "default" in block, action.dest  # `(default: X)`, or what an unset value means


def test_defaults_are_the_paper_harness_on_a_gpu_a_small_one_on_cpu_and_a_recipe_overrides_them():
    plain = eval_script.parse_args(["--model", "builtin:tiny"])
    assert eval_script.harness(plain, gpu=True) == PAPER_HARNESS
    assert eval_script.max_new_tokens(plain, gpu=True) is None
    cpu = eval_script.harness(plain, gpu=False)
    assert (cpu.max_tool_calls, cpu.max_completion_length, eval_script.max_new_tokens(plain, gpu=False)) == (
        3,
        2048,
        128,
    )
    assert (cpu.temperature, cpu.top_p) == (PAPER_HARNESS.temperature, PAPER_HARNESS.top_p)
    args = eval_script.parse_args(["--model", "builtin:tiny", "--config", TINY_RECIPE, "--top_p", "0.5"])
    for gpu in (True, False):  # the recipe's harness wherever it runs
        run = eval_script.harness(args, gpu=gpu)
        assert (run.max_turns, run.max_completion_length, run.temperature, run.top_p) == (3, 32, 1.0, 0.5)  # flag wins
        assert eval_script.max_new_tokens(args, gpu=gpu) is None  # as in training: the episode budget only
    flagged = eval_script.parse_args(["--model", "builtin:tiny", "--max_new_tokens", "7"])
    assert eval_script.max_new_tokens(flagged, gpu=False) == 7
    assert args.dataset_name == "builtin:airline" and args.environment_factory == "trl_sgcd.envs.airline:AirlineEnv"


def _write_echo_task(tmp_path, monkeypatch, rows) -> str:
    (tmp_path / "echo_env_for_eval.py").write_text(ENV_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(data)


def test_any_environment_and_dataset(tmp_path, monkeypatch, capsys):
    rows = [{"prompt": [{"role": "user", "content": "Say pear."}], "word": "pear"}] * 2
    data = _write_echo_task(tmp_path, monkeypatch, rows)
    base = ["--model", "builtin:tiny", "--dataset_name", data, "--split", "train"]
    base += ["--environment_factory", "echo_env_for_eval:EchoEnv", "--max_completion_length", "8", "--no_progress"]
    output = tmp_path / "eval.json"
    assert eval_script.main([*base, "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["num_tasks"] == 2 and [r["reward"] for r in result["records"]] == [0.0, 0.0]  # get_reward scored it
    assert result["harness"]["max_completion_length"] == 8
    with pytest.raises(UsageError, match=r"EchoEnv.reset\(\*\*row\) fails on row 1.*word"):
        bad = _write_echo_task(tmp_path, monkeypatch, [{"prompt": "Say pear.", "answer": "pear"}])
        eval_script.main([*base[:3], bad, *base[4:]])


def test_the_tiny_recipe_is_scored_by_the_environment_verifier_not_its_training_reward(tmp_path, capsys):
    """The tiny recipe trains with `scripted_sibling_reward` (the first rollout of each task counts as a success);
    `eval --config` must score with the airline verifier instead, and say so: the random model solves nothing."""
    output = tmp_path / "e.json"
    argv = ["--model", "builtin:tiny", "--config", TINY_RECIPE, "--n", "2", "--no_progress", "--output", str(output)]
    assert eval_script.main(argv) == 0
    err = capsys.readouterr().err
    assert (
        "reward_funcs 'trl_sgcd.envs.scripted:scripted_sibling_reward' is a training-only reward; scoring with the "
        "environment's verifier trl_sgcd.envs.airline:airline_reward." in err
    )
    result = json.loads(output.read_text())
    assert result["pass@1"] == 0.0 and [r["reward"] for r in result["records"]] == [0.0, 0.0]


TRAINING_ONLY = """
from echo_env_for_eval import EchoEnv


def always_one(completions, **kwargs):
    return [1.0] * len(completions)


always_one.eval_reward = None  # training only, and no verifier named


class SilentEnv(EchoEnv):
    get_reward = None
"""


def test_a_training_only_reward_without_a_verifier(tmp_path, monkeypatch, capsys):
    """No verifier named: the environment's `get_reward()` scores it (said in one line), else it is refused before
    any model loads."""
    data = _write_echo_task(tmp_path, monkeypatch, [{"prompt": "Say pear.", "word": "pear"}])
    (tmp_path / "training_only_reward.py").write_text(TRAINING_ONLY)
    base = ["--dataset_name", data, "--split", "train", "--reward_funcs", "training_only_reward:always_one"]
    args = eval_script.parse_args([*base, "--environment_factory", "echo_env_for_eval:EchoEnv"])
    _, reward = eval_script.resolve_rollout(args)
    assert reward.__name__ == "_environment_reward"
    assert "scoring with the environment's verifier the environment's get_reward()" in capsys.readouterr().err
    args = eval_script.parse_args([*base, "--environment_factory", "training_only_reward:SilentEnv"])
    with pytest.raises(
        UsageError, match="'training_only_reward:always_one' is a training-only reward and no verifier"
    ):
        eval_script.resolve_rollout(args)


def test_old_flag_spellings_still_parse_with_a_deprecation_line(capsys):
    args = eval_script.parse_args(["--model", "builtin:tiny", "--no-greedy", "--max-completion-length=8"])
    assert args.no_greedy is True and args.max_completion_length == 8
    err = capsys.readouterr().err
    assert (
        "--no-greedy (write --no_greedy)" in err and "--max-completion-length (write --max_completion_length)" in err
    )


def test_tiny_model_run_shows_a_progress_bar_over_episodes(tmp_path, capsys):
    argv = ["--model", "builtin:tiny", "--n", "2", "--max_completion_length", "4", "--batch_size", "1"]
    assert eval_script.main([*argv, "--output", str(tmp_path / "e.json")]) == 0
    captured = capsys.readouterr()
    assert "pass@1" in captured.out
    assert "2/2" in captured.err and "episode" in captured.err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["num_tasks"] == 2 and len(result["records"]) == 2 and result["model"] == "builtin:tiny"
