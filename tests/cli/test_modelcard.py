"""The model card: written at the end of every run, the real base model, the credit settings and final `sgcd/`
metrics, the paper with its authors; and the end-to-end run is quiet (no warning that is not the user's fault)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_sgcd.config import SGCDConfig
from trl_sgcd.modelcard import final_metrics, is_hub_id, render_model_card

ROOT = Path(__file__).resolve().parents[2]
AUTHORS = ("Ding, Tianyu", "Xin, Jianhong", "De la Cruz Weinstein, Juan Pablo")


def card(tmp_path, base_model, history=()):
    args = SGCDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, credit_mode="uniform", credit_top_k=7)
    return render_model_card(args, base_model=base_model, model_name="run", log_history=list(history))


def test_hub_model_is_linked_and_local_ones_are_named(tmp_path):
    hub = card(tmp_path, "Qwen/Qwen3-4B")
    assert "[Qwen/Qwen3-4B](https://huggingface.co/Qwen/Qwen3-4B)" in hub and "base_model: Qwen/Qwen3-4B" in hub
    for local in ("builtin:tiny", str(tmp_path), "./outputs/sft"):
        text = card(tmp_path, local)
        assert f"`{local}`" in text and "huggingface.co/None" not in text and "base_model:" not in text
    assert not is_hub_id(None) and not is_hub_id(str(tmp_path)) and is_hub_id("gpt2")


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
    assert f"`{base}`" in text and "huggingface.co/None" not in text and "| `sgcd/weight_mean` |" in text
    output = result.stdout + result.stderr
    for noise in ("FutureWarning", "gradient_checkpointing", "experimental feature", "Setting accelerator to CPU"):
        assert noise not in output, noise
