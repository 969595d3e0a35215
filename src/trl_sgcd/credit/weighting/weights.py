r"""Credit weights W = clip(1 + gamma * s, 1, c) and their application to the GRPO advantage (paper §4.5, eq. 3-4).

All functions are pure. W is built under `torch.no_grad()` from a detached saliency, so it is a constant for the actor
(Proposition 1 of the paper): the clipped surrogate with A * W has gradient W times the GRPO one (Proposition 2), the
sign of A is kept and |A * W| <= c |A| (Corollary 1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def credit_weights(
    saliency: Tensor,
    *,
    gamma: float = 1.0,
    cap: float = 2.0,
    eligible_mask: Tensor | None = None,
) -> Tensor:
    r"""
    Token credit weights W = clip(1 + gamma * s, 1, cap).

    Args:
        saliency (`torch.Tensor` of shape `(B, T)`):
            Credit saliency s in [0, 1] (NaN is read as 0).
        gamma (`float`, *optional*, defaults to `1.0`):
            Gain; must be >= 0.
        cap (`float`, *optional*, defaults to `2.0`):
            Largest weight c; must be > 1.
        eligible_mask (`torch.Tensor` of shape `(B, T)` or `None`, *optional*):
            Credit-eligible tokens; W = 1 elsewhere. `None`: every token is eligible.

    Returns:
        `torch.Tensor`: float32 weights of shape `(B, T)` in [1, cap], never requiring grad.
    """
    if not cap > 1.0:
        raise ValueError(f"cap={cap!r} must be > 1 (W is clipped to [1, cap]).")
    if not gamma >= 0.0:
        raise ValueError(f"gamma={gamma!r} must be >= 0 (W must never go below 1).")
    _check_2d("saliency", saliency)
    if eligible_mask is not None:
        _check_same("eligible_mask", eligible_mask, saliency)
    with torch.no_grad():
        s = torch.nan_to_num(saliency.detach().float(), nan=0.0)  # (B, T)
        weights = (1.0 + gamma * s).clamp(min=1.0, max=cap)  # (B, T)
        if eligible_mask is not None:
            weights = torch.where(eligible_mask.to(weights.device).bool(), weights, torch.ones_like(weights))
    return weights


def uniform_credit_weights(weights: Tensor, eligible_mask: Tensor) -> Tensor:
    r"""
    The `uniform` ablation: each row's weights replaced by their mean over its eligible tokens (same credit mass, no
    localisation). W = 1 off the mask and in rows without an eligible token.

    Args:
        weights (`torch.Tensor` of shape `(B, T)`):
            Credit weights from [`credit_weights`].
        eligible_mask (`torch.Tensor` of shape `(B, T)`):
            Credit-eligible tokens.

    Returns:
        `torch.Tensor`: float32 weights of shape `(B, T)`, never requiring grad.
    """
    _check_2d("weights", weights)
    _check_same("eligible_mask", eligible_mask, weights)
    with torch.no_grad():
        mask = eligible_mask.to(weights.device).bool()  # (B, T)
        w = weights.detach().float()  # (B, T)
        count = mask.sum(dim=1, keepdim=True)  # (B, 1)
        mean = torch.where(mask, w, torch.zeros_like(w)).sum(dim=1, keepdim=True) / count.clamp(min=1)  # (B, 1)
        mean = torch.where(count > 0, mean, torch.ones_like(mean))  # (B, 1)
        return torch.where(mask, mean.expand_as(w), torch.ones_like(w))  # (B, T)


def apply_credit_weights(advantages: Tensor, weights: Tensor) -> Tensor:
    r"""
    Token-level advantages A_hat = A[:, None] * W (eq. 3), which TRL's clipped surrogate consumes as (B, T) advantages.

    Args:
        advantages (`torch.Tensor` of shape `(B,)`):
            Group-relative advantage of each rollout.
        weights (`torch.Tensor` of shape `(B, T)`):
            Credit weights (detached here in any case).

    Returns:
        `torch.Tensor`: advantages of shape `(B, T)`, dtype of `advantages`.
    """
    _check_2d("weights", weights)
    if advantages.dim() != 1 or advantages.size(0) != weights.size(0):
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}; expected ({weights.size(0)},), one per row of weights "
            f"{tuple(weights.shape)}."
        )
    return advantages.unsqueeze(1) * weights.detach().to(advantages.device, advantages.dtype)  # (B, T)


def loss_mask(completion_mask: Tensor, tool_mask: Tensor | None = None) -> Tensor:
    r"""
    The tokens TRL's loss covers: `completion_mask * tool_mask` (tool observations are 0 in `tool_mask`).

    Args:
        completion_mask (`torch.Tensor` of shape `(B, T)`):
            TRL's completion mask.
        tool_mask (`torch.Tensor` of shape `(B, T)` or `None`, *optional*):
            TRL's tool mask (absent without tools).

    Returns:
        `torch.Tensor`: `(B, T)`, dtype of `completion_mask`.
    """
    return completion_mask if tool_mask is None else completion_mask * tool_mask.to(completion_mask.dtype)


def _check_2d(name: str, x: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be (B, T); got shape {tuple(x.shape)}.")


def _check_same(name: str, x: Tensor, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(ref.shape)}.")
