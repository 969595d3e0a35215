"""The model card: written at the end of every run, the real base model, the credit settings and final `sgcd/`
metrics, the paper with its authors; and the end-to-end run is quiet (no warning that is not the user's fault)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_sgcd.config import SGCDConfig
from trl_sgcd.modelcard import RunFacts, base_model_label, final_metrics, is_hub_id, render_model_card, run_title

ROOT = Path(__file__).resolve().parents[2]
AUTHORS = ("Ding, Tianyu", "Xin, Jianhong", "De la Cruz Weinstein, Juan Pablo")


def card(tmp_path, base_model, history=(), **facts):
    args = SGCDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, credit_mode="uniform", credit_top_k=7)
    facts = RunFacts(base_model=base_model, **facts)
    return render_model_card(args, model_name="run", facts=facts, log_history=list(history))


def test_hub_model_is_linked_and_local_ones_are_named_never_by_a_path(tmp_path):
    hub = card(tmp_path, "Qwen/Qwen3-4B")
    assert "[Qwen/Qwen3-4B](https://huggingface.co/Qwen/Qwen3-4B)" in hub and "base_model: Qwen/Qwen3-4B" in hub
    bundled = card(tmp_path, "builtin:smollm2")
    assert "| Base model | HuggingFaceTB/SmolLM2-135M-Instruct (bundled) |" in bundled
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in bundled
    for local in ("builtin:tiny", str(tmp_path / "sft"), "./outputs/sft"):
        text = card(tmp_path, local)
        assert "huggingface.co/None" not in text and "base_model:" not in text
        assert str(tmp_path) not in text and "./outputs" not in text  # a folder is named by its last part only
    assert "`sft (a local model folder)`" in card(tmp_path, "./outputs/sft")
    assert not is_hub_id(None) and not is_hub_id(str(tmp_path)) and is_hub_id("gpt2")
    assert not is_hub_id("builtin:airline") and not is_hub_id("tau2:airline")


def test_a_cached_builtin_folder_is_named_by_its_model(tmp_path):
    """The demo trains a warm start that lives in the cache: the card names SmolLM2, not the cache folder."""
    warm = tmp_path / "cache" / "warm_start" / "smollm2-135m-n96-e3"
    warm.mkdir(parents=True)
    (warm / "trl_sgcd_warm_start.json").write_text(json.dumps({"settings": {"model": "smollm2-135m"}}))
    label, hub_id = base_model_label(str(warm))
    assert label == "HuggingFaceTB/SmolLM2-135M-Instruct (bundled), warm-started with SFT"
    assert hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    converted = tmp_path / "cache" / "smollm2-135m-instruct"
    converted.mkdir()
    (converted / "trl_sgcd_model.json").write_text(json.dumps({"kind": "bundled", "version": 1}))
    assert base_model_label(str(converted))[0] == "HuggingFaceTB/SmolLM2-135M-Instruct (bundled)"
    assert base_model_label("bundled")[0] == "HuggingFaceTB/SmolLM2-135M-Instruct (bundled)"  # the older name


def test_title_is_the_run(tmp_path):
    args = SGCDConfig(output_dir=str(tmp_path / "rl"), use_cpu=True, bf16=False)
    assert run_title(args) == "rl" and run_title(args, "from-trl") == "from-trl"
    args.run_name = "airline-sgcd"
    assert run_title(args, "rl") == "airline-sgcd"
    args.hub_model_id = "me/airline-sgcd-v2"
    assert run_title(args) == "airline-sgcd-v2"


def test_no_row_says_none_and_unknown_rows_are_left_out(tmp_path):
    text = card(tmp_path, None)
    assert "None" not in text.replace("No metrics", "")
    for label in ("| Base model |", "| Dataset |", "| Environment |", "| Reward |", "| Training steps |"):
        assert label not in text
    assert "| Reference model |" not in text  # contrast backend: no reference model
    off = render_model_card(
        SGCDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, credit_mode="off"),
        model_name="run",
        facts=RunFacts(),
        log_history=[],
    )
    assert "| Credit mode | `off` |" in off and "| Gain gamma |" not in off and "| Weight cap c |" not in off


def test_training_only_reward_is_not_reported_and_a_verifier_score_is(tmp_path):
    history = [{"loss": 0.1, "reward": 0.5, "sgcd/weight_mean": 1.2, "step": 1}]
    fake = card(
        tmp_path,
        "builtin:tiny",
        history,
        rewards=["scripted_sibling_reward"],
        training_only_rewards=["scripted_sibling_reward"],
    )
    assert "| `reward` |" not in fake and "`scripted_sibling_reward` (training-only)" in fake
    assert "not a measure of the model" in fake and "## Evaluation" not in fake
    real = card(
        tmp_path,
        "builtin:tiny",
        history,
        rewards=["airline_reward"],
        evaluation=[("pass@1, 20 held-out tasks (greedy, airline verifier)", "0.450 -> 0.300")],
    )
    assert (
        "| `reward` | 0.5 |" in real
        and "| pass@1, 20 held-out tasks (greedy, airline verifier) | 0.450 -> 0.300 |" in real
    )


def test_training_procedure_has_the_credit_settings_and_the_last_metrics(tmp_path):
    history = [
        {"loss": 0.5, "sgcd/weight_mean": 1.1, "reward": 0.2, "step": 1},
        {"loss": 0.4, "sgcd/weight_mean": 1.3, "sgcd/spans": 4, "step": 2},
        {"train_runtime": 9.0},
    ]
    text = card(tmp_path, "builtin:tiny", history)
    procedure = text.split("## Training procedure", 1)[1]
    for row in ("| Credit mode | `uniform` |", "| Teacher top-K | `7` |", "| Reference backend | `contrast` |"):
        assert row in procedure
    assert "| `sgcd/weight_mean` | 1.3 |" in procedure and "| `sgcd/spans` | 4 |" in procedure
    assert final_metrics(history) == {"loss": 0.4, "reward": 0.2, "sgcd/spans": 4, "sgcd/weight_mean": 1.3}
    assert "train_runtime" not in procedure


def test_the_paper_is_cited_with_its_authors(tmp_path):
    text = card(tmp_path, "builtin:tiny")
    citation = text.split("## Citation", 1)[1]
    assert "2606.12634" in citation and all(author in citation for author in AUTHORS)


def test_a_tiny_run_writes_one_trustworthy_card_in_each_pushable_folder(tmp_path):
    """A real 1-step run of the tiny model (the tiny recipe's training-only reward, a saved checkpoint): the output
    folder and the checkpoint folder each get a card titled by the run, with the base model by name, the dataset,
    environment, reward and steps, the credit settings, no "None", and no training reward passed off as a score."""
    from trl_sgcd import SGCDTrainer
    from trl_sgcd.envs.airline import AirlineEnv, make_airline_dataset
    from trl_sgcd.envs.scripted import scripted_sibling_reward

    args = SGCDConfig(
        output_dir=str(tmp_path / "out"),
        run_name="tiny-airline",
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        max_tool_calling_iterations=1,
        save_strategy="steps",
        save_steps=1,
        logging_steps=1,
        credit_cap=2.0,
        dataloader_num_workers=0,
    )
    trainer = SGCDTrainer(
        model="builtin:tiny",
        reward_funcs=scripted_sibling_reward,
        args=args,
        train_dataset=make_airline_dataset("train").select(range(2)),
        environment_factory=AirlineEnv,
    )
    trainer.model_card_dataset_name = "builtin:airline"
    trainer.train()
    cards = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("README.md"))
    assert cards == ["out/README.md", "out/checkpoint-1/README.md"]
    for path in cards:
        text = (tmp_path / path).read_text()
        assert "# Model card for tiny-airline" in text
        assert "| Base model | builtin:tiny (a random 2-layer Llama for tests) |" in text
        for row in (
            "| Dataset | `builtin:airline` |",
            "| Environment | `AirlineEnv` |",
            "| Reward | `scripted_sibling_reward` (training-only) |",
            "| Training steps | 1 |",
            "| Credit mode | `sgcd` |",
            "| Weight cap c | `2.0` |",
        ):
            assert row in text, (path, row)
        assert "None" not in text and "| `reward` |" not in text and "| `sgcd/weight_mean` |" in text
        assert "cache" not in text.lower() and str(tmp_path) not in text


@pytest.mark.slow
def test_tiny_run_writes_the_card_and_is_quiet(tmp_path):
    """`trl-sgcd train --config recipes/tiny_cpu.yaml --max_steps 1`, no checkpoint saved: the card is there anyway,
    and stderr has none of the warnings a user cannot act on."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-m", "trl_sgcd", "train", "--config", "recipes/tiny_cpu.yaml", "--max_steps", "1"]
        + ["--output_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    text = (tmp_path / "README.md").read_text()
    base = yaml.safe_load((ROOT / "recipes" / "tiny_cpu.yaml").read_text())["model_name_or_path"]  # a builtin name
    assert (
        f"| Base model | {base} (a random 2-layer Llama for tests) |" in text
        and "huggingface.co/None" not in text
        and "| `sgcd/weight_mean` |" in text
    )
    output = result.stdout + result.stderr
    for noise in ("FutureWarning", "gradient_checkpointing", "experimental feature", "Setting accelerator to CPU"):
        assert noise not in output, noise
