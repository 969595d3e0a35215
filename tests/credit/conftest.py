"""Fixtures shared by the credit tests: the sharpened tiny Llama the scorer tests use, and an offline W&B run."""

import os

import pytest
import torch


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with torch.no_grad():  # sharpen the random model's near-uniform next-token distributions: larger divergences
        model.model.norm.weight.mul_(40.0)
    return model.eval()


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """Real wandb in offline mode, every folder it writes under tmp_path; the run is finished afterwards."""
    wandb = pytest.importorskip("wandb")
    for name, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        os.makedirs(tmp_path / sub, exist_ok=True)
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    yield wandb
    if wandb.run is not None:
        wandb.finish()
