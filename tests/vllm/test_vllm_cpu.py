"""vLLM colocate on CPU (`trl_sgcd.vllm_cpu`): whole SGCD runs with the `vllm-cpu` build, and the hook's pieces.

The runs (marker `vllm`, `make test-vllm`, skipped where vLLM is not importable) execute tests/vllm/colocate_run.py
as a subprocess per case (vLLM wants a fresh process) on the bundled SmolLM2-135M: `plain` (plain prompts, full
fine-tuning) and `tools_lora` (TRL's tool loop with an `environment_factory`, LoRA adapters merged for the sync), so
that each behaviour is run once and the engine starts twice. The unit tests below them need no vLLM and run in the
default suite.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from trl_sgcd.import_utils import is_vllm_available
from trl_sgcd.vllm_cpu import (
    cpu_colocate_generation,
    tied_output_embedding,
    trainer_compute_dtype,
    with_tied_weights,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
requires_vllm = pytest.mark.skipif(not is_vllm_available(), reason="needs vLLM (make install-vllm)")
GAP_SYNCED = 1e-3  # mean |vLLM - trainer| log-prob right after a sync (float32 engine and trainer: ~1e-5 measured)


def _run(case: str, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp(f"vllm_{case}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "vllm", "colocate_run.py"), "--case", case, "--output-dir", out],
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)


def _steps(result: dict) -> list[dict]:
    return [e for e in result["log_history"] if "loss" in e]


def _check_generation_and_sync(result: dict) -> None:
    # generation came from the vLLM engine, through the CPU hook, once per step, each after a weight sync
    assert result["generation_class"] == "CPUColocateVLLMGeneration"
    assert result["counts"]["vllm_generate"] >= 2 and result["counts"]["sync_weights"] == 2
    assert result["engine_dtype"] == result["trainer_dtype"] == "torch.float32"
    # the probe: noise on the trainer's weights is visible to a stale engine and gone after one sync
    assert result["gap_stale"] > 20 * GAP_SYNCED
    assert result["gap_after_sync"] < GAP_SYNCED


@pytest.mark.vllm
@pytest.mark.timeout(1800)  # ~2-4 min on 2 idle cores, 10-20 min on a shared one
@requires_vllm
def test_plain_prompts(tmp_path_factory):
    result = _run("plain", tmp_path_factory)
    _check_generation_and_sync(result)
    assert not result["lora_adapters"]
    steps = _steps(result)
    assert len(steps) == 2
    for step in steps:  # TRL's own measure of the engine/trainer mismatch on the sampled tokens, after each sync
        assert step["sampling/sampling_logp_difference/mean"] < GAP_SYNCED
        assert abs(step["sampling/importance_sampling_ratio/mean"] - 1.0) < 0.01
        assert step["sgcd/rows_scored"] > 0 and step["sgcd/credit_tokens"] > 0
    assert max(result["credit_weight_max"]) > 1.0


@pytest.mark.vllm
@pytest.mark.timeout(1800)  # ~2-4 min on 2 idle cores, 10-20 min on a shared one
@requires_vllm
def test_environment_factory_tools_with_lora_adapters(tmp_path_factory):
    # one engine for two behaviours: TRL's tool loop against an environment, and LoRA adapters merged for the sync
    result = _run("tools_lora", tmp_path_factory)
    assert result["lora_adapters"]
    _check_generation_and_sync(result)  # the probe's noise lands on the adapters only: the merge reaches the engine
    steps = _steps(result)
    assert all(step["tools/call_frequency"] > 0 for step in steps)  # TRL's tool loop ran against the environment
    assert any(step["sgcd/rows_scored"] > 0 for step in steps)
    assert max(result["credit_weight_max"]) > 1.0
    assert all(step["sampling/sampling_logp_difference/mean"] < GAP_SYNCED for step in steps)


# ------------------------------------------------------------------ the hook's pieces (no vLLM needed)


def test_tied_output_embedding_is_sent_under_its_own_name(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tied = tied_output_embedding(model)
    assert tied == ("lm_head.weight", "model.embed_tokens.weight")
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # what TRL iterates: the shared tensor once
    sent = dict(with_tied_weights(((n, p.data) for n, p in model.named_parameters()), tied))
    assert set(sent) == set(names) | {"lm_head.weight"}
    assert sent["lm_head.weight"] is sent["model.embed_tokens.weight"]
    # an untied model, or an iterator that already has it, gets nothing extra
    assert dict(with_tied_weights([("a", torch.ones(1))], None)).keys() == {"a"}
    twice = list(with_tied_weights([("model.embed_tokens.weight", 1), ("lm_head.weight", 2)], tied))
    assert twice == [("model.embed_tokens.weight", 1), ("lm_head.weight", 2)]


def test_tied_output_embedding_under_peft(tiny_model_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert tied_output_embedding(lora) == ("lm_head.weight", "model.embed_tokens.weight")


def test_untied_model_has_no_tied_output_embedding():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    assert tied_output_embedding(LlamaForCausalLM(config)) is None


def test_engine_dtype_follows_the_trainer():
    model = torch.nn.Linear(2, 2)
    assert trainer_compute_dtype(model, "no") == torch.float32
    assert trainer_compute_dtype(model, "bf16") == torch.bfloat16
    assert trainer_compute_dtype(model, "fp16") == torch.float16
    assert trainer_compute_dtype(model.to(torch.bfloat16), None) == torch.bfloat16


def test_hook_is_inert_off_the_cpu_backend(monkeypatch):
    from trl.trainer import grpo_trainer

    from trl_sgcd import vllm_cpu

    original = grpo_trainer.VLLMGeneration

    class Args:
        use_vllm, vllm_mode, vllm_enable_sleep_mode = True, "colocate", False

    monkeypatch.setattr(vllm_cpu, "is_vllm_cpu_backend", lambda: False)  # e.g. CUDA vllm: TRL's own class and sync
    with cpu_colocate_generation(Args):
        assert grpo_trainer.VLLMGeneration is original
    monkeypatch.setattr(vllm_cpu, "is_vllm_cpu_backend", lambda: True)
    with cpu_colocate_generation(Args):
        assert grpo_trainer.VLLMGeneration is vllm_cpu.CPUColocateVLLMGeneration
    assert grpo_trainer.VLLMGeneration is original  # restored after the trainer is built
    Args.use_vllm = False
    with cpu_colocate_generation(Args):
        assert grpo_trainer.VLLMGeneration is original


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("vllm_mode", "server", "vllm_mode='server'"), ("vllm_enable_sleep_mode", True, "vllm_enable_sleep_mode")],
)
def test_cpu_backend_refuses_what_it_cannot_do(monkeypatch, field, value, match):
    from trl_sgcd import vllm_cpu

    monkeypatch.setattr(vllm_cpu, "is_vllm_cpu_backend", lambda: True)

    class Args:
        use_vllm, vllm_mode, vllm_enable_sleep_mode = True, "colocate", False

    setattr(Args, field, value)
    with pytest.raises(ValueError, match=match):
        with cpu_colocate_generation(Args):
            pass
