"""`trl-sgcd demo`: profiles and flags, the table, the plot, and a smoke run end to end with the random tiny model."""

import json
import os

import pytest

from trl_sgcd.cli.utils import UsageError
from trl_sgcd.demo.plots import plot_demo, weight_histogram
from trl_sgcd.demo.run import FULL, QUICK, _parser, format_table, main, settings_from_args

# A complete demo with the tiny random model: 1 SFT step on 1 conversation, 2 test tasks, 1 RL step of 4 rollouts.
SMOKE = [
    "--model",
    "builtin:tiny",
    "--sft_tasks",
    "1",
    "--sft_steps",
    "1",
    "--sft_batch_size",
    "1",
    "--sft_max_length",
    "1400",
    "--eval_tasks",
    "2",
    "--eval_max_turns",
    "1",
    "--eval_max_new_tokens",
    "8",
    "--steps",
    "1",
    "--rollouts_per_step",
    "4",
    "--num_generations",
    "2",
    "--max_completion_length",
    "16",
    "--max_tool_calls",
    "1",
    "--learning_rate",
    "1e-3",
    "--no_progress",
]


def _settings(argv):
    return settings_from_args(_parser().parse_args(argv))


def test_profiles_and_overrides():
    assert _settings([]) == FULL and _settings(["--quick"]) == QUICK
    assert QUICK.steps < FULL.steps and QUICK.eval_tasks <= FULL.eval_tasks
    assert (
        FULL.eval_tasks == 20 and FULL.credit_mode == "sgcd" and FULL.temperature == 0.8 and FULL.precision == "auto"
    )
    s = _settings(
        [
            "--quick",
            "--steps",
            "5",
            "--seed",
            "3",
            "--num_generations",
            "2",
            "--sft_learning_rate",
            "1e-4",
            "--credit_mode",
            "off",
        ]
    )
    assert (s.steps, s.seed, s.num_generations, s.sft_learning_rate, s.credit_mode) == (5, 3, 2, 1e-4, "off")
    assert s.eval_tasks == QUICK.eval_tasks
    with pytest.raises(UsageError, match="multiple"):
        _settings(["--rollouts_per_step", "6", "--num_generations", "4"])
    with pytest.raises(UsageError, match="--precision"):
        _settings(["--precision", "fp16"])


def test_old_flag_spellings_and_model_names_still_work_with_a_deprecation_line(capsys):
    from trl_sgcd.demo.run import parse_args

    args = parse_args(["--output-dir", "o", "--credit-mode=off", "--no-progress", "--model", "tiny"])
    assert (args.output_dir, args.credit_mode, args.no_progress) == ("o", "off", True)
    assert settings_from_args(args).model == "builtin:tiny"
    err = capsys.readouterr().err
    assert "--output-dir (write --output_dir)" in err and "--credit-mode (write --credit_mode)" in err
    assert "--model='tiny' is deprecated and will be removed: write 'builtin:tiny'" in err
    assert "-" not in "".join(o[2:] for a in _parser()._actions for o in a.option_strings if o.startswith("--"))


def test_cli_dispatches_demo(capsys):
    from trl_sgcd.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--output_dir" in out and "--steps" in out and "--seed" in out


def _fake_eval(pass1, action):
    return {
        "pass@1": pass1,
        "pass^k": pass1,
        "k": 1,
        "num_tasks": 3,
        "per_category": {
            "action": {"pass@1": action, "pass^k": action, "num_tasks": 2},
            "no_action": {"pass@1": 1.0, "pass^k": 1.0, "num_tasks": 1},
        },
        "audit": {"zero_tool_success_share": 0.0, "tools_per_success": 1.5, "tool_failure_rate": 0.25},
    }


def _fake_metrics():
    log = [
        {"step": i, "reward": 0.25 * i, "sgcd/mixed_group_fraction": 0.5, "sgcd/credit_token_fraction": 0.1}
        for i in (1, 2)
    ]
    return {
        "config": {"rl_steps": 2, "credit_mode": "sgcd"},
        "before": _fake_eval(1 / 3, 0.0),
        "after": _fake_eval(2 / 3, 0.5),
        "training": {"log_history": log},
        "wall_s": {"model": 1.0, "warm_start": 2.0, "rl": 3.0, "total": 6.0},
    }


def test_table_lists_before_after_categories_and_audit():
    table = format_table(_fake_metrics())
    assert "pass@1, all 3 tasks" in table and "0.333" in table and "0.667" in table
    assert "action (n=2)" in table and "no_action (n=1)" in table
    for label in ("zero-tool success share", "tools per success", "tool failure rate", "wall time", "total 6 s"):
        assert label in table


def test_plot_and_weight_histogram(tmp_path):
    hist = weight_histogram([1.0, 1.0, 1.5, 2.0, 2.5], cap=2.0, bins=4)
    assert hist["counts"] == [2, 0, 1, 2] and hist["num_tokens"] == 5 and hist["share_above_1"] == pytest.approx(0.6)
    for name, weights in (("with.png", [1.0] * 50 + [1.3, 1.7, 2.0]), ("without.png", None)):
        path = plot_demo(_fake_metrics(), str(tmp_path / name), weights=weights)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(path) > 10_000


def test_demo_smoke_with_the_tiny_model(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "demo"
    assert main(SMOKE + ["--output_dir", str(out), "--warm_start_dir", str(tmp_path / "ws")]) == 0
    printed = capsys.readouterr().out
    assert "pass@1, all 2 tasks" in printed and "wall time" in printed and "tool failure rate" in printed
    assert "credit lift" in printed  # the lift of its own run, in its own block (n/a when nothing was scored)
    assert "sgcd training: 1 step x 2 tasks x 2 rollouts" in printed and "  step 1: " in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"config", "warm_start", "before", "after", "training", "checkpoint", "plot", "wall_s"} <= set(metrics)
    assert "credit_localization" in metrics["training"]
    assert metrics["precision"] == metrics["warm_start"]["settings"]["precision"] in ("bf16", "fp32")
    for phase in ("model", "warm_start", "eval_before", "rl", "eval_after", "save", "plot", "total"):
        assert metrics["wall_s"][phase] >= 0.0
    for result in (metrics["before"], metrics["after"]):
        assert result["num_tasks"] == 2 and 0.0 <= result["pass@1"] <= 1.0 and "audit" in result
    log = metrics["training"]["log_history"]
    step_logs = [e for e in log if "reward" in e]
    assert len(step_logs) == 1 and step_logs[0]["step"] == 1
    assert "sgcd/mixed_group_fraction" in step_logs[0] and "sgcd/weight_mean" in step_logs[0]
    assert metrics["warm_start"]["settings"]["model"] == "tiny" and metrics["warm_start"]["cached"] is False
    assert len(json.loads((out / "eval_before.json").read_text())) == 2

    png = out / "demo.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    # one model card, in the folder a user would push, titled by the run and naming the base model
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("README.md")) == ["checkpoint/README.md"]
    card = (out / "checkpoint" / "README.md").read_text()
    assert "# Model card for demo" in card and "| Base model | builtin:tiny (a random 2-layer Llama" in card
    assert "(greedy, airline verifier)" in card and "None" not in card and str(tmp_path) not in card
    if metrics["credit_table"]:  # written when some rollout was scored
        assert (out / "credit_table.html").read_text().startswith("<!DOCTYPE html>")

    checkpoint = out / "checkpoint"
    config = json.loads((checkpoint / "config.json").read_text())
    assert "auto_map" not in config and not list(checkpoint.glob("*.py"))  # plain transformers, no trl_sgcd code
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    assert model.config.model_type == "llama"

    # A second run with the same warm-start settings would reuse it (the cache itself: tests/test_warmstart.py).
    from trl_sgcd.tooluse.warmstart import is_warm_started

    assert is_warm_started(metrics["warm_start"]["path"], metrics["warm_start"]["settings"])


@pytest.mark.slow
def test_quick_demo_with_the_bundled_model(tmp_path):
    """The real `trl-sgcd demo --quick` (SmolLM2-135M, a few minutes on 2 CPU cores)."""
    out = tmp_path / "quick"
    assert main(["--quick", "--output_dir", str(out), "--no_progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["before"]["num_tasks"] == QUICK.eval_tasks
    assert [e["step"] for e in metrics["training"]["log_history"] if "reward" in e] == list(range(1, QUICK.steps + 1))
    assert (out / "demo.png").stat().st_size > 10_000


def test_prefix_cached_generation_equals_plain_generation(tiny_model_path, monkeypatch):
    """The demo's prefix-cached generate function returns what `hf_generate_fn` (the naive reference: left padding,
    the whole prompt prefilled) returns, greedy, for prompts of different lengths that share the airline prefix; and
    it uses transformers' current cache API (no `past_key_values` deprecation warning of ours)."""
    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import generic, get_json_schema

    from trl_sgcd.envs.airline import AirlineEnv, make_airline_dataset
    from trl_sgcd.tooluse.evaluation import environment_tools, hf_generate_fn, render_prompt_ids
    from trl_sgcd.tooluse.prefix_cache import prefix_cached_generate_fn, shared_prefix

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    dataset = make_airline_dataset("test", seed=0, n=4)
    schemas = [get_json_schema(t) for t in environment_tools(AirlineEnv())]
    prompts = [render_prompt_ids(tokenizer, row["prompt"], schemas) for row in dataset]
    assert len({len(p) for p in prompts}) > 1  # the suffixes really differ in length, so padding is exercised
    prefix = shared_prefix(tokenizer, dataset)
    assert len(prefix) > 500 and all(p[: len(prefix)] == prefix for p in prompts)

    reference = hf_generate_fn(model, tokenizer, max_new_tokens=12)(prompts)
    said = []  # transformers says "`past_key_values` ... deprecated" with warnings.warn and with logger.warning_once
    monkeypatch.setattr(generic.logger, "warning_once", lambda message, *a, **k: said.append(str(message)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached = prefix_cached_generate_fn(model, tokenizer, prefix, max_new_tokens=12)(False, 0)(prompts)
    assert [m for m in said + [str(w.message) for w in caught] if "past_key_values" in m] == []
    assert cached == reference and all(len(c) > 0 for c in cached)
    with pytest.raises(ValueError, match="cached prefix"):
        prefix_cached_generate_fn(model, tokenizer, prefix, max_new_tokens=4)(False, 0)([prompts[0][5:]])


def test_the_warm_start_config_uses_no_deprecated_name(tmp_path):
    """The demo's warm start builds its `SFTConfig` without transformers' `gradient_checkpointing` FutureWarning."""
    import warnings

    from trl_sgcd.tooluse.warmstart import _sft_config, warm_start_settings

    settings = warm_start_settings(
        epochs=1.0, max_length=64, learning_rate=1e-4, n_tasks=1, precision="fp32", model_name_or_path="builtin:tiny"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = _sft_config(settings, str(tmp_path), epochs=1.0, progress=False)
    assert not [w for w in caught if "checkpointing" in str(w.message)]
    assert not args.gradient_checkpointing
