"""Model access for every forward trl-sgcd runs itself (the credit scorer and the two extra losses): unwrap the
trainer's model, find its decoder, apply its LM head in chunks with the config's logit scale, softcap and temperature.

Public so the scorer and the losses share one implementation; [`map_chunks`] is the one loop over completion positions
(Liger's chunked-loss pattern: never more than `chunk_size` rows of `(n, V)` logits at once; with gradient, each
chunk's logits are recomputed in the backward). Nothing here runs a backbone forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LMHead", "backbone_of", "chunk_slices", "map_chunks", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The `PreTrainedModel` inside accelerate/DDP/DeepSpeed (`.module`) and PEFT (`get_base_model()`) wrappers."""
    from transformers import PreTrainedModel

    while not isinstance(model, PreTrainedModel) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module  # DistributedDataParallel, DeepSpeedEngine (which has a `config` dict of its own)
    if callable(getattr(model, "get_base_model", None)):  # peft.PeftModel: LoRA layers stay active
        model = model.get_base_model()
    return model


def backbone_of(base: nn.Module) -> nn.Module:
    """The decoder stack of an unwrapped causal LM (what runs before its LM head)."""
    prefix = getattr(base, "base_model_prefix", "")
    backbone = getattr(base, prefix, None) if prefix else None
    return backbone if isinstance(backbone, nn.Module) else base.get_decoder()


class LMHead:
    """The LM head applied to hidden states, with the config's logit scale / softcap and the temperature (as TRL)."""

    def __init__(self, base: nn.Module, temperature: float):
        self.module = base.get_output_embeddings()
        self.weight, self.bias = self.module.weight, getattr(self.module, "bias", None)
        self.zero3 = hasattr(self.weight, "ds_id")
        self.plain = self.zero3 or type(self.module) is nn.Linear  # else (e.g. a LoRA lm_head) call the module
        self.temperature = temperature
        config = base.config.get_text_config()
        self.softcap = getattr(config, "final_logit_softcapping", None)
        scale = getattr(config, "logit_scale", None)  # same lookup order as trl.trainer.utils.add_fused_lm_head
        if scale is None:
            scale = getattr(config, "output_multiplier", None)
        if scale is None:
            scale = getattr(config, "lm_head_multiplier", None)
        if scale is None and getattr(config, "logits_scaling", None) is not None:
            scale = config.logits_scaling if config.model_type == "hyperclovax" else 1 / config.logits_scaling
        self.scale = 1.0 if scale is None else scale
        self.vocab_size = getattr(self.module, "out_features", None) or config.vocab_size  # right under ZeRO-3 too

    def logits(self, hidden: Tensor, weight: Tensor | None = None) -> Tensor:
        """float32 logits `(n, V)` of hidden states `(n, H)`, divided by the temperature."""
        weight = self.weight if weight is None else weight
        hidden = hidden.to(weight.device)
        if self.plain:
            if hidden.dtype != weight.dtype and not torch.is_autocast_enabled(hidden.device.type):
                hidden = hidden.to(weight.dtype)
            z = F.linear(hidden, weight, self.bias).float()  # (n, V)
        else:
            z = self.module(hidden).float()  # (n, V)
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z / self.temperature if self.temperature != 1.0 else z

    @contextmanager
    def gathered(self):
        """Under DeepSpeed ZeRO-3, all-gather the partitioned head once (one collective, whatever the positions)."""
        params = [p for p in (self.weight, self.bias) if p is not None and hasattr(p, "ds_id")]
        if not params:
            yield
            return
        import deepspeed
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        params = list({id(p): p for p in params if p.ds_status != ZeroParamStatus.AVAILABLE}.values())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield


def chunk_slices(n: int, size: int) -> list[slice]:
    """Slices of at most `size` positions: the LM head never sees more at once."""
    return [slice(start, start + size) for start in range(0, n, size)]


def _logits_then(head: LMHead, weight: Tensor | None, fn, hidden: Tensor, *inputs):
    return fn(head.logits(hidden, weight), *inputs)


def map_chunks(head: LMHead, hidden: Tensor, fn, *per_position, chunk_size: int, weight=None, grad: bool = False):
    """
    `fn(logits, *inputs)` on every chunk of at most `chunk_size` positions: the one loop over completion positions.

    Args:
        head ([`LMHead`]): the LM head (call inside `head.gathered()` under ZeRO-3).
        hidden (`torch.Tensor` of shape `(N, H)`): hidden states of the N positions.
        fn (`Callable`): `fn(logits (n, V) float32, *inputs) -> result` for one chunk of n positions.
        *per_position: tensors (or objects sliceable like them) with one row per position, sliced with the chunk.
        chunk_size (`int`): positions per chunk.
        weight (`torch.Tensor`, *optional*): the head weight to use (a detached copy under ZeRO-3).
        grad (`bool`, *optional*, defaults to `False`): checkpoint each chunk (its logits are recomputed in the
            backward), for losses with gradient.

    Returns:
        `list`: `fn`'s results, one per chunk, in order (empty for N = 0).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be >= 1.")
    out = []
    for part in chunk_slices(hidden.size(0), chunk_size):
        inputs = [x[part] for x in per_position]
        if grad:
            out.append(checkpoint(_logits_then, head, weight, fn, hidden[part], *inputs, use_reentrant=False))
        else:
            out.append(fn(head.logits(hidden[part], weight), *inputs))
    return out
