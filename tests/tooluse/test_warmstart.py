"""Warm start: SFT on the expert trajectories with the tiny model, cached by settings, marker written last."""

import os

import pytest

from trl_sgcd.tooluse.warmstart import (
    WARM_START_MARKER,
    read_marker,
    sft_dataset,
    warm_start,
    warm_start_settings,
)

# One optimizer step on one conversation, truncated (the prompt with tool schemas is ~1.1k tokens, so assistant tokens
# remain): the cheapest real SFTTrainer run.
TINY = dict(
    epochs=1,
    max_length=1400,
    learning_rate=1e-3,
    n_tasks=1,
    batch_size=1,
    max_steps=1,
    model_name_or_path="tiny",
    progress=False,
)


def _settings(**overrides):
    kwargs = {k: v for k, v in TINY.items() if k != "progress"} | overrides
    return warm_start_settings(**kwargs)


def test_sft_dataset_is_the_train_split():
    dataset = sft_dataset(n_tasks=3)
    assert dataset.column_names == ["messages", "tools"] and len(dataset) == 3
    assert len(sft_dataset()) == 96
    with pytest.raises(ValueError):
        sft_dataset(n_tasks=0)


def test_settings_key_every_choice():
    base = _settings()
    assert base["model"] == "tiny" and base["n_tasks"] == 1 and base["precision"] in ("fp32", "bf16")
    assert _settings() == base  # deterministic, including the data hash
    for change in (
        {"learning_rate": 2e-3},
        {"max_steps": 2},
        {"n_tasks": 2},
        {"seed": 1},
        {"precision": "fp32"},
        {"max_length": 1500},
    ):
        other = _settings(**change)
        if other == base:  # precision "fp32" equals "auto" on a CPU without bf16 units
            assert change == {"precision": "fp32"}
        else:
            assert other != base
    with pytest.raises(ValueError):
        _settings(precision="fp8")


def test_warm_start_trains_once_then_hits_the_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = warm_start(cache_dir=str(tmp_path), **TINY)
    assert os.path.dirname(os.path.dirname(folder)) == str(tmp_path)
    marker = read_marker(folder)
    assert marker["settings"] == _settings() and marker["global_step"] == 1
    assert any("loss" in entry for entry in marker["log_history"])
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".warm-")]  # no temporary folder left
    assert not os.path.exists(os.path.join(folder, "trainer"))
    model = AutoModelForCausalLM.from_pretrained(folder)  # a plain transformers folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "tool_call" in tokenizer.chat_template and next(model.parameters()).dtype.is_floating_point
    mtime = os.path.getmtime(os.path.join(folder, WARM_START_MARKER))

    import trl

    class NoTraining:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a cached warm start must not train again")

    monkeypatch.setattr(trl, "SFTTrainer", NoTraining)
    assert warm_start(cache_dir=str(tmp_path), **TINY) == folder
    assert os.path.getmtime(os.path.join(folder, WARM_START_MARKER)) == mtime

    # An explicit output_dir with a finished warm start of the same settings is a cache hit too.
    assert warm_start(output_dir=folder, **TINY) == folder


def test_a_failed_warm_start_leaves_no_finished_folder(tmp_path, monkeypatch):
    import trl

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("killed")

    monkeypatch.setattr(trl, "SFTTrainer", Broken)
    target = tmp_path / "ws"
    with pytest.raises(RuntimeError, match="killed"):
        warm_start(output_dir=str(target), **TINY)
    assert not target.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".warm-")]
    # A folder without the marker (e.g. copied by hand) is not mistaken for a finished warm start.
    target.mkdir()
    assert read_marker(str(target)) is None
