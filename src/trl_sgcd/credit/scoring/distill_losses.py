r"""The two losses with gradient outside TRL's clipped surrogate: `direct_sd`'s teacher matching and SDPO's JSD.

Both run the policy on the student's own rollout WITH gradient and compare it, on the teacher's top-K support plus one
tail bucket, with the teacher's log-probabilities stored when the batch was scored (`DenseScores.teacher_topk_*`,
detached). They share their input setup, one per-position divergence ([`generalized_jsd`] on the teacher's top K plus
one tail bucket; the teacher's tail is the scorer's, summed outside the top K, never `1 - sum q`) and the scorer's model
access and chunk loop (`model_access.map_chunks`); each LM-head chunk is recomputed in the backward (checkpointed), so
memory stays at one chunk of logits.

**`direct_sd` ablation** ([`teacher_matching_loss`]): KL(q^K || p^K) averaged over the loss tokens (the divergence
below with alpha = 0).

**SDPO comparator** ([`sdpo_distillation_loss`]; Hübotter et al., 2026; the paper's Table 7 row).

Table 7 describes SDPO as pure self-distillation that replaces the reward, with a successful peer rollout as teacher
context and a symmetric JSD on a top-K support of about 100 tokens. TRL's experimental `SDPOTrainer`
(`trl/experimental/sdpo`) offers the same objective as `distillation_mode="topk_logits"` with `distillation_alpha=0.5`
and `distillation_add_tail=True`; this module computes that loss on the student's own rollout:

    loss = mean over rows of ( mean over the row's loss tokens of D_alpha(p_t^K || q_t^K) )

with p the student (WITH gradient), q the teacher (the current policy scored with another successful sibling in its
prompt, detached), both reduced to the teacher's top-K ids plus one tail bucket, and D_alpha TRL's generalized JSD:
alpha = 0 is KL(q || p), alpha = 1 is KL(p || q), 0 < alpha < 1 is (1 - alpha) KL(p || m) + alpha KL(q || m) with
m = (1 - alpha) p + alpha q (alpha = 0.5: the symmetric JSD).

Where this departs from TRL's `SDPOTrainer` (documented in docs/results.md too):

* The support is the teacher's top-K (computed once, when the batch is scored), not the student's top-K recomputed
  at the loss step; both keep a tail bucket, so the divergence is over a distribution that sums to 1 either way.
* The teacher is the live policy as of generation time (TRL's `teacher_model_kind="live"` when the loss is computed
  on-policy); TRL's default EMA teacher and its `base` teacher are not offered.
* No importance-sampling correction of the distillation loss (`distillation_is_clip`): the loss step is on-policy
  with one optimizer step per generation batch (`num_iterations=1`), where TRL's ratio is 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trl_sgcd.credit.scoring.divergence import LOG_FLOOR
from trl_sgcd.credit.scoring.hidden_states import completion_hidden
from trl_sgcd.credit.scoring.model_access import LMHead, backbone_of, map_chunks, unwrap_model


def _student_and_teacher(
    model, input_ids, attention_mask, completion_mask, topk_ids, topk_logprobs, tail_logprobs, *, temperature
):
    """
    The inputs of a distillation loss: `(mask (B, T), head, hidden (N, H), ids (N, K), log_q (N, K + 1))`, the
    student's hidden states at the N `completion_mask` tokens (with gradient), the teacher's top-K ids there, and its
    log-probabilities on the top K and the tail bucket (last).
    """
    mask = completion_mask.bool()  # (B, T)
    if topk_ids.shape[:2] != mask.shape or topk_logprobs.shape != topk_ids.shape:
        raise ValueError(
            f"teacher_topk_ids {tuple(topk_ids.shape)} and teacher_topk_logprobs "
            f"{tuple(topk_logprobs.shape)} must both be (B, T, K) with (B, T) = {tuple(mask.shape)}."
        )
    base = unwrap_model(model)
    head = LMHead(base, temperature)
    hidden, _ = completion_hidden(backbone_of(base), input_ids, attention_mask, mask)  # (N, H)
    ids = topk_ids[mask].to(hidden.device)  # (N, K)
    log_q = topk_logprobs[mask].to(hidden.device).float()  # (N, K)
    if tail_logprobs is None:  # a caller without the scorer's tail: 1 - sum q, floored (imprecise near 1)
        log_q_tail = (1.0 - log_q.exp().sum(-1)).clamp(min=torch.finfo(torch.float32).tiny).log()  # (N,)
    else:
        log_q_tail = tail_logprobs[mask].to(hidden.device).float()  # (N,)
    return mask, head, hidden, ids, torch.cat([log_q, log_q_tail.unsqueeze(-1)], dim=-1)


def _support_divergence(logits: Tensor, ids: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    """Per-position [`generalized_jsd`] `(n,)` of the student (`logits` `(n, V)`) against the teacher (`log_q`
    `(n, K + 1)`, tail last) on the K teacher ids plus one tail bucket."""
    log_p_all = torch.log_softmax(logits, dim=-1)  # (n, V)
    log_p = log_p_all.gather(-1, ids)  # (n, K)
    log_p_tail = torch.logsumexp(log_p_all.scatter(-1, ids, float("-inf")), dim=-1)  # (n,)
    student = torch.cat([log_p, log_p_tail.unsqueeze(-1)], dim=-1).clamp(min=LOG_FLOOR)  # (n, K+1)
    return generalized_jsd(student, log_q.clamp(min=LOG_FLOOR), alpha)


def _per_token(model, input_ids, attention_mask, mask, ids, logprobs, tail, *, alpha, temperature, chunk_size):
    """The divergence at every `mask` token `(N,)`, with gradient; and `mask` `(B, T)` (bool), `hidden` `(N, H)`."""
    mask, head, hidden, ids, log_q = _student_and_teacher(
        model, input_ids, attention_mask, mask, ids, logprobs, tail, temperature=temperature
    )
    parts = [hidden.sum(-1)[:0].float() * 0.0]  # (0,) connected to the graph even with no token
    with head.gathered():
        weight = head.weight.detach().clone() if head.zero3 else head.weight

        def divergence(logits, chunk_ids, chunk_log_q):
            return _support_divergence(logits, chunk_ids, chunk_log_q, alpha)

        parts += map_chunks(head, hidden, divergence, ids, log_q, chunk_size=chunk_size, weight=weight, grad=True)
    return torch.cat(parts), mask, hidden


def teacher_matching_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    teacher_tail_logprobs: Tensor | None = None,
    *,
    temperature: float,
    chunk_size: int,
) -> Tensor:
    r"""
    Teacher-matching KL(q^K || p^K) of the `direct_sd` ablation, WITH gradient through the student. The only gradient
    path outside TRL's clipped surrogate in trl-sgcd, and only in that ablation.

    Args:
        model: the policy (PEFT/DDP wrappers accepted); run in its current mode.
        input_ids (`torch.Tensor` of shape `(B, L)`): student prompt + completion, completion = last T columns.
        attention_mask (`torch.Tensor` of shape `(B, L)`).
        completion_mask (`torch.Tensor` of shape `(B, T)`): tokens the loss averages over.
        teacher_topk_ids (`torch.Tensor` of shape `(B, T, K)`): from `DenseScores.teacher_topk_ids`.
        teacher_topk_logprobs (`torch.Tensor` of shape `(B, T, K)`): from `DenseScores.teacher_topk_logprobs`.
        teacher_tail_logprobs (`torch.Tensor` of shape `(B, T)`, *optional*): `DenseScores.teacher_tail_logprobs`, the
            teacher's log-mass outside the top K; without it, `log(1 - sum q)` (imprecise when the top K holds ~all).
        temperature (`float`): sampling temperature.
        chunk_size (`int`): positions per LM-head chunk; each chunk is recomputed in the backward (checkpointed), so
            memory stays at one chunk of logits.

    Returns:
        `torch.Tensor`: scalar, the KL averaged over the `completion_mask` tokens (0 when there is none).

    Under ZeRO-3 the head is gathered once and used detached: the KL then trains the backbone but not the LM head.
    """
    per_token, mask, hidden = _per_token(
        model, input_ids, attention_mask, completion_mask, teacher_topk_ids, teacher_topk_logprobs,
        teacher_tail_logprobs, alpha=0.0, temperature=temperature, chunk_size=chunk_size,
    )  # fmt: skip
    return (per_token.sum() + hidden.sum() * 0.0) / mask.sum().clamp(min=1)


# ------------------------------------------------------------------------------------------------------------ SDPO
def generalized_jsd(log_p: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    r"""
    TRL's SDPO divergence `compute_divergence(student, teacher, alpha)` over the last dimension.

    Args:
        log_p (`torch.Tensor` of shape `(N, S)`): student log-probabilities (a full distribution over S buckets).
        log_q (`torch.Tensor` of shape `(N, S)`): teacher log-probabilities.
        alpha (`float`): 0 = KL(q || p), 1 = KL(p || q), 0.5 = symmetric JSD.

    Returns:
        `torch.Tensor`: `(N,)`.
    """
    p, q = log_p.exp(), log_q.exp()  # (N, S)
    if alpha == 0.0:
        return (q * (log_q - log_p)).sum(-1)
    if alpha == 1.0:
        return (p * (log_p - log_q)).sum(-1)
    log_m = torch.logaddexp(log_p + torch.log1p(torch.tensor(-alpha)), log_q + torch.log(torch.tensor(alpha)))
    kl_p = (p * (log_p - log_m)).sum(-1)  # (N,)
    kl_q = (q * (log_q - log_m)).sum(-1)  # (N,)
    return (1.0 - alpha) * kl_p + alpha * kl_q


def sdpo_distillation_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    teacher_tail_logprobs: Tensor | None = None,
    *,
    alpha: float,
    temperature: float,
    chunk_size: int,
) -> Tensor:
    r"""
    SDPO's top-K distillation loss, WITH gradient through the student (see the module docstring).

    Args:
        model: the policy (PEFT/DDP wrappers accepted); run in its current mode.
        input_ids (`torch.Tensor` of shape `(B, L)`): student prompt + completion, completion = last T columns.
        attention_mask (`torch.Tensor` of shape `(B, L)`).
        completion_mask (`torch.Tensor` of shape `(B, T)`): the distilled tokens (rows without a teacher: all 0).
        teacher_topk_ids (`torch.Tensor` of shape `(B, T, K)`), teacher_topk_logprobs (`torch.Tensor` of shape
            `(B, T, K)`): the teacher's top-K support and its log-probabilities.
        teacher_tail_logprobs (`torch.Tensor` of shape `(B, T)`, *optional*): `DenseScores.teacher_tail_logprobs`, the
            teacher's log-mass outside the top K; without it, `log(1 - sum q)` (imprecise when the top K holds ~all).
        alpha (`float`): the divergence, see [`generalized_jsd`].
        temperature (`float`): sampling temperature.
        chunk_size (`int`): positions per LM-head chunk (each chunk is recomputed in the backward).

    Returns:
        `torch.Tensor`: scalar; per-row means over `completion_mask`, averaged over the rows (TRL's aggregation).
    """
    per_token, mask, hidden = _per_token(
        model, input_ids, attention_mask, completion_mask, teacher_topk_ids, teacher_topk_logprobs,
        teacher_tail_logprobs, alpha=alpha, temperature=temperature, chunk_size=chunk_size,
    )  # fmt: skip
    dense = torch.zeros(mask.shape, dtype=per_token.dtype, device=per_token.device)  # (B, T)
    dense = dense.masked_scatter(mask.to(dense.device), per_token)
    per_row = dense.sum(-1) / mask.sum(-1).clamp(min=1).to(dense.device)  # (B,)
    return per_row.mean() + hidden.sum() * 0.0


__all__ = ["generalized_jsd", "sdpo_distillation_loss", "teacher_matching_loss"]
