"""Dense top-K teacher/student divergence: pure per-position math on logits, no model (paper §4.3).

At each completion position the student's and the teacher's next-token distributions are compared on a small support:
the teacher's top-K tokens, plus the observed (sampled) token when it is not among them, plus one tail bucket per side
that keeps the remaining mass. With K >= V this is the full-vocabulary divergence. The model-running scorer that calls
these functions chunk by chunk is `trl_sgcd.credit.scoring.scorer`.

Where this departs from the paper's text (numerics only, same quantities):

* The tail mass is the sum of the probabilities outside the support instead of `1 - sum_S p`: the same number
  without the cancellation of `1 - 0.99999...` in float32. Log-probabilities are floored at
  `log(float32 tiny)` (~ -87.3) wherever they enter a log-ratio, so masked (`-inf`) or underflowing entries give finite
  values, and `0 * log 0 = 0`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)  # ~ -87.34: smallest log-probability that enters a log-ratio


# --------------------------------------------------------------------------------------------------------- pure math
def topk_support(teacher_logits: Tensor, observed_ids: Tensor, *, top_k: int) -> tuple[Tensor, Tensor]:
    r"""
    Support of the dense divergence: the teacher's top-K token ids plus the observed token id.

    Args:
        teacher_logits (`torch.Tensor` of shape `(N, V)`):
            Teacher logits (or log-probabilities: only their order matters).
        observed_ids (`torch.Tensor` of shape `(N,)`):
            Observed (sampled) token ids.
        top_k (`int`):
            K, clipped to V.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `ids` of shape `(N, K+1)` (the last slot is always the observed id) and
        `valid` of shape `(N, K+1)`, `False` on the last slot when the observed id is already in the top-K.
    """
    _check_top_k(top_k)
    _check_rows(teacher_logits, observed_ids)
    k = min(top_k, teacher_logits.size(-1))
    top_ids = teacher_logits.topk(k, dim=-1).indices  # (N, K)
    observed = observed_ids.to(top_ids.device, torch.long).unsqueeze(-1)  # (N, 1)
    ids = torch.cat([top_ids, observed], dim=-1)  # (N, K+1)
    valid = torch.ones_like(ids, dtype=torch.bool)  # (N, K+1)
    valid[:, -1] = (top_ids != observed).all(dim=-1)
    return ids, valid


def topk_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    observed_ids: Tensor,
    *,
    top_k: int,
    divergence: str = "reverse_kl",
) -> tuple[Tensor, Tensor]:
    r"""
    Top-K-plus-tail divergence between student and teacher next-token distributions, and the teacher entropy.

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`):
            Student logits, already divided by the sampling temperature. Any float dtype; computed in float32.
        teacher_logits (`torch.Tensor` of shape `(N, V)`):
            Teacher logits, same convention.
        observed_ids (`torch.Tensor` of shape `(N,)`):
            Observed token ids.
        top_k (`int`):
            Size K of the teacher top-K support (>= 1; K >= V gives the full-vocabulary quantities).
        divergence (`str`, *optional*, defaults to `"reverse_kl"`):
            `"reverse_kl"` (KL(p || q)), `"forward_kl"` (KL(q || p)) or `"jsd"`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: divergence and teacher entropy, each float32 of shape `(N,)`, finite and
        >= 0.
    """
    _check_divergence(divergence)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits has shape {tuple(student_logits.shape)} but teacher_logits has shape "
            f"{tuple(teacher_logits.shape)}; they must match."
        )
    _check_rows(teacher_logits, observed_ids)
    support = _teacher_support(teacher_logits.float(), observed_ids, top_k=top_k)
    div, ent, _ = _student_scores(student_logits.float(), support, divergence=divergence)
    return div, ent


@dataclass
class _Support:
    """Teacher side of N positions: support ids `(N, K+1)` (last slot = observed), `valid` `(N, K+1)`, teacher
    log-probabilities on the support `(N, K+1)` and of the tail `(N,)`."""

    ids: Tensor
    valid: Tensor
    log_q: Tensor
    log_q_tail: Tensor

    def __getitem__(self, part: slice) -> _Support:
        return _Support(self.ids[part], self.valid[part], self.log_q[part], self.log_q_tail[part])


def _teacher_support(teacher_logits: Tensor, observed_ids: Tensor, *, top_k: int) -> _Support:
    """Teacher half of the scores, from float32 logits `(N, V)` (left unchanged)."""
    log_q = torch.log_softmax(teacher_logits, dim=-1)  # (N, V)
    ids, valid = topk_support(log_q, observed_ids, top_k=top_k)  # (N, K+1)
    return _Support(ids, valid, *_reduce_to_support(log_q, ids))


def topk_tail_logprob(support: _Support) -> Tensor:
    """Log of the teacher mass outside its top K `(N,)`: the tail bucket plus the observed token when it lies outside
    the top K, added in log space (never `1 - sum`), for the extra losses' tail bucket."""
    observed_outside = support.log_q[:, -1].masked_fill(~support.valid[:, -1], float("-inf"))  # (N,)
    return torch.logaddexp(support.log_q_tail, observed_outside)


def _student_scores(student_logits: Tensor, support: _Support, *, divergence: str) -> tuple[Tensor, Tensor, Tensor]:
    """Student half: divergence `(N,)`, teacher entropy `(N,)` and log p(observed) `(N,)` from float32 logits."""
    lp_support, lp_tail = _reduce_to_support(torch.log_softmax(student_logits, dim=-1), support.ids)
    keep = torch.cat([support.valid, support.valid.new_ones(support.valid.size(0), 1)], dim=-1)  # (N, K+2)
    log_p = torch.cat([lp_support, lp_tail.unsqueeze(-1)], dim=-1)  # (N, K+2)
    log_q = torch.cat([support.log_q, support.log_q_tail.unsqueeze(-1)], dim=-1)  # (N, K+2)
    div, ent = _support_divergence(log_p, log_q, keep, divergence)
    return div, ent, lp_support[:, -1]  # the last support slot is always the observed token


def _reduce_to_support(log_probs: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probabilities on the support `(N, K+1)` and of the tail bucket `(N,)`. Overwrites `log_probs`."""
    support = log_probs.gather(-1, ids)  # (N, K+1)
    log_probs.scatter_(-1, ids, float("-inf"))
    # Mass outside the support, summed directly (no 1 - sum_S cancellation); log-probs are <= 0, so exp needs no
    # shift. -inf when the support covers the vocabulary.
    tail = log_probs.exp_().sum(-1).log()  # (N,)
    return support, tail


def _support_divergence(log_p: Tensor, log_q: Tensor, keep: Tensor, divergence: str) -> tuple[Tensor, Tensor]:
    """Divergence and teacher entropy from support-plus-tail log-probabilities `(N, S)`; `keep` masks duplicates."""
    p = log_p.exp() * keep  # (N, S)  exactly 0 for masked or -inf entries
    q = log_q.exp() * keep  # (N, S)
    log_p = log_p.clamp(min=LOG_FLOOR)
    log_q = log_q.clamp(min=LOG_FLOOR)
    if divergence == "reverse_kl":
        div = (p * (log_p - log_q)).sum(-1)  # (N,)
    elif divergence == "forward_kl":
        div = (q * (log_q - log_p)).sum(-1)  # (N,)
    else:
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)  # (N, S)
        div = 0.5 * (p * (log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)  # (N,)
    ent = -(q * log_q).sum(-1)  # (N,)
    return _finite_nonneg(div), _finite_nonneg(ent)


def _finite_nonneg(x: Tensor) -> Tensor:
    # Rounding can leave -1e-8; a row of all -inf/NaN logits has no distribution: report 0, never NaN.
    return torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0)


# ------------------------------------------------------------------------------------------------------------ checks
def _check_top_k(top_k: int) -> None:
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be an int >= 1.")


def _check_divergence(divergence: str) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is not supported; choose one of {list(DIVERGENCES)}.")


def _check_rows(logits: Tensor, observed_ids: Tensor) -> None:
    if logits.dim() != 2 or observed_ids.shape != logits.shape[:1]:
        raise ValueError(
            f"observed_ids has shape {tuple(observed_ids.shape)}; expected ({logits.shape[0]},) for logits of shape "
            f"{tuple(logits.shape)} (N, V)."
        )
