"""The dense scorer: runs the current policy, forward-only, under the student and the teacher context (paper §4.3).

The current policy is scored twice on the same completion ids: the student sees the clean prompt, the teacher the
prompt with the credit reference inserted. The per-position math is `trl_sgcd.credit.scoring.divergence`, the model
access and the chunk loop over positions `trl_sgcd.credit.scoring.model_access` (shared with the extra losses).

* No `(B, L, V)` logits: the backbone runs once per input (with `share_prefix`, the prompt prefix common to a
  micro-batch is encoded once and the rest on its key/value cache, `trl_sgcd.credit.scoring.hidden_states`; not under ZeRO-3), the
  completion positions' hidden states go through the LM head `chunk_size` at a time. The teacher is scored first and
  reduced to its support (K+1 ids and log-probabilities per position) before the student forward, so one context's
  hidden states are held at a time; under ZeRO-3 both forwards run first and the head is gathered once for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from trl_sgcd.credit.scoring.divergence import (
    _check_divergence,
    _check_top_k,
    _student_scores,
    _Support,
    _teacher_support,
    topk_tail_logprob,
)
from trl_sgcd.credit.scoring.hidden_states import completion_hidden
from trl_sgcd.credit.scoring.model_access import LMHead, backbone_of, chunk_slices, map_chunks, unwrap_model


# ------------------------------------------------------------------------------------------------------------ scorer
@dataclass
class DenseScores:
    r"""
    Output of [`DenseDivergenceScorer.score`]. Every per-position field is 0 where `completion_mask == 0`.

    Args:
        divergence (`torch.Tensor` of shape `(B, T)`, float32): dense top-K divergence d_t.
        teacher_entropy (`torch.Tensor` of shape `(B, T)`, float32): teacher entropy H_t on the support plus tail.
        student_logprobs (`torch.Tensor` of shape `(B, T)`, float32): log p(observed token), student context.
        teacher_logprobs (`torch.Tensor` of shape `(B, T)`, float32): log q(observed token), teacher context.
        teacher_topk_ids (`torch.Tensor` of shape `(B, T, K)` or `None`): teacher top-K ids, when requested.
        teacher_topk_logprobs (`torch.Tensor` of shape `(B, T, K)` or `None`): their teacher log-probabilities.
        teacher_tail_logprobs (`torch.Tensor` of shape `(B, T)` or `None`): log of the teacher mass outside the top K
            (summed directly, not `1 - sum`), when the top K is requested.
        num_forwards (`int`): backbone forwards run, dummy ones included (2 per micro-batch, 4 with a shared prefix).
    """

    divergence: Tensor
    teacher_entropy: Tensor
    student_logprobs: Tensor
    teacher_logprobs: Tensor
    teacher_topk_ids: Tensor | None = None
    teacher_topk_logprobs: Tensor | None = None
    teacher_tail_logprobs: Tensor | None = None
    num_forwards: int = 0


_FIELDS = ("divergence", "teacher_entropy", "student_logprobs", "teacher_logprobs")


class DenseDivergenceScorer:
    r"""
    Scores completions under the student and the teacher context with the current policy, forward-only.

    Args:
        top_k (`int`, *optional*, defaults to `32`): size K of the teacher top-K support.
        divergence (`str`, *optional*, defaults to `"reverse_kl"`): `"reverse_kl"`, `"forward_kl"` or `"jsd"`.
        chunk_size (`int`, *optional*, defaults to `256`): completion positions projected through the LM head at once.
        temperature (`float`, *optional*, defaults to `1.0`): sampling temperature the logits are divided by.
        batch_size (`int` or `None`, *optional*, defaults to `None`): rows per forward; `None` scores all rows at once.
        share_prefix (`bool`, *optional*, defaults to `False`): encode the prompt prefix common to a micro-batch once
            and score the rest on its key/value cache (`trl_sgcd.credit.scoring.hidden_states`); ignored under ZeRO-3.
    """

    def __init__(
        self,
        *,
        top_k=32,
        divergence="reverse_kl",
        chunk_size=256,
        temperature=1.0,
        batch_size=None,
        share_prefix=False,
    ):
        _check_top_k(top_k)
        _check_divergence(divergence)
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be >= 1.")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1 or None.")
        self.top_k, self.divergence, self.chunk_size = top_k, divergence, chunk_size
        self.temperature, self.batch_size, self.share_prefix = temperature, batch_size, bool(share_prefix)

    @classmethod
    def from_config(cls, args) -> DenseDivergenceScorer:
        """Build from an [`SGCDConfig`] (`credit_top_k`, `credit_divergence`, `credit_chunk_size`, `temperature`,
        `credit_scoring_batch_size`, `credit_share_prefix`)."""
        return cls(
            top_k=args.credit_top_k,
            divergence=args.credit_divergence,
            chunk_size=args.credit_chunk_size,
            temperature=args.temperature,
            batch_size=args.credit_scoring_batch_size or args.per_device_train_batch_size,
            share_prefix=args.credit_share_prefix,
        )

    def num_batches(self, n_rows: int) -> int:
        """Micro-batches (each one student and one teacher forward) needed for `n_rows` rows."""
        if n_rows <= 0:
            return 0
        return 1 if self.batch_size is None else math.ceil(n_rows / self.batch_size)

    def score(
        self,
        model: nn.Module,
        student_input_ids: Tensor,
        student_attention_mask: Tensor,
        teacher_input_ids: Tensor,
        teacher_attention_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        min_batches: int = 0,
        return_teacher_topk: bool = False,
    ) -> DenseScores:
        r"""
        Dense scores of the completion tokens. Inputs follow TRL's layout: `*_input_ids` `(B, L)` is a left-padded
        prompt followed by the right-padded `completion_ids` `(B, T)`, which are always the last T columns; the student
        and the teacher prompt may differ in length. No gradient; dropout off; the model's train/eval modes are
        restored. `min_batches` pads with dummy forwards so that every rank runs the same number (ZeRO-3).
        """
        _check_layout(
            student_input_ids,
            student_attention_mask,
            teacher_input_ids,
            teacher_attention_mask,
            completion_ids,
            completion_mask,
        )
        n_rows = completion_ids.size(0)
        step = self.batch_size or max(n_rows, 1)
        modes = {module: module.training for module in model.modules()}  # restored one by one afterwards
        model.eval()
        parts, forwards = [], 0
        try:
            with torch.no_grad():
                base = unwrap_model(model)
                backbone, head = backbone_of(base), LMHead(base, self.temperature)
                for start in range(0, n_rows, step):
                    rows = slice(start, start + step)
                    dense, n = self._score_rows(
                        backbone,
                        head,
                        student_input_ids[rows],
                        student_attention_mask[rows],
                        teacher_input_ids[rows],
                        teacher_attention_mask[rows],
                        completion_ids[rows],
                        completion_mask[rows],
                        return_teacher_topk,
                    )
                    parts.append(dense)
                    forwards += n
                for _ in range(max(0, min_batches - self.num_batches(n_rows))):
                    self._dummy_batch(backbone, head, completion_ids.device)
                    forwards += 2
                if not parts:
                    parts.append(self._empty(completion_ids.shape, head, completion_ids.device, return_teacher_topk))
        finally:
            for module, training in modes.items():
                module.training = training
        return DenseScores(**{name: torch.cat([p[name] for p in parts]) for name in parts[0]}, num_forwards=forwards)

    def _score_rows(self, backbone, head, s_ids, s_mask, t_ids, t_mask, completion_ids, completion_mask, topk):
        """One micro-batch: one backbone forward per context (two with a shared prefix), one head gather, the chunk
        loops. Returns the dense `(b, T, ...)` fields and the number of backbone forwards.

        Without ZeRO-3 the teacher's positions are reduced to their support right after the teacher forward, so only
        one context's hidden states `(N, H)` are ever held; under ZeRO-3 both forwards run first and the head is
        gathered once for both passes.
        """
        mask = completion_mask.bool()  # (b, T)
        observed = completion_ids[mask].to(head.weight.device)  # (N,)
        share = self.share_prefix and not head.zero3  # ZeRO-3: every rank must run the same forwards
        h_teacher, n_teacher = completion_hidden(backbone, t_ids, t_mask, mask, share_prefix=share)  # (N, H)
        support = None if head.zero3 else self._teacher_pass(head, h_teacher, observed)
        if support is not None:
            del h_teacher
        h_student, n_student = completion_hidden(backbone, s_ids, s_mask, mask, share_prefix=share)  # (N, H)
        flat = self._empty((observed.numel(),), head, observed.device, topk)  # (N,) and (N, K)
        with head.gathered():
            if support is None:
                support = self._teacher_pass(head, h_teacher, observed)
                del h_teacher
            student = partial(_student_scores, divergence=self.divergence)
            for (div, ent, student_lp), part in zip(
                map_chunks(head, h_student, student, support, chunk_size=self.chunk_size),
                chunk_slices(observed.numel(), self.chunk_size),
            ):
                flat["divergence"][part], flat["teacher_entropy"][part] = div, ent
                flat["student_logprobs"][part] = student_lp
        flat["teacher_logprobs"] = support.log_q[:, -1]
        if topk:
            flat["teacher_topk_ids"], flat["teacher_topk_logprobs"] = support.ids[:, :-1], support.log_q[:, :-1]
            flat["teacher_tail_logprobs"] = topk_tail_logprob(support)
        dense = self._empty(mask.shape, head, completion_ids.device, topk)  # (b, T) and (b, T, K)
        for name, values in flat.items():
            dense[name][mask.to(completion_ids.device)] = values.to(completion_ids.device)
        return dense, n_teacher + n_student

    def _teacher_pass(self, head, hidden: Tensor, observed: Tensor) -> _Support:
        teacher = partial(_teacher_support, top_k=self.top_k)
        parts = map_chunks(head, hidden, teacher, observed, chunk_size=self.chunk_size)
        if not parts:
            k = min(self.top_k, head.vocab_size) + 1
            empty = observed.new_zeros((0, k))
            return _Support(empty, empty.bool(), empty.float(), observed.new_zeros(0).float())
        return _Support(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ids", "valid", "log_q", "log_q_tail")))

    def _empty(self, shape, head, device, topk) -> dict[str, Tensor]:
        out = {name: torch.zeros(shape, device=device) for name in _FIELDS}  # float32
        if topk:
            k = min(self.top_k, head.vocab_size)
            out["teacher_topk_ids"] = torch.zeros((*shape, k), dtype=torch.long, device=device)
            out["teacher_topk_logprobs"] = torch.zeros((*shape, k), device=device)
            out["teacher_tail_logprobs"] = torch.zeros(shape, device=device)
        return out

    def _dummy_batch(self, backbone, head, device) -> None:
        """Same collectives as a real micro-batch (two forwards, one gather, one head call) on a 1x2 input."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=device)
        for _ in range(2):
            hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
        with head.gathered():
            head.logits(hidden[0, -1:])


# ------------------------------------------------------------------------------------------------------------ checks
def _check_layout(s_ids, s_mask, t_ids, t_mask, completion_ids, completion_mask) -> None:
    if completion_ids.dim() != 2 or completion_mask.shape != completion_ids.shape:
        raise ValueError(
            f"completion_mask {tuple(completion_mask.shape)} must match completion_ids {tuple(completion_ids.shape)}."
        )
    n_rows, t = completion_ids.shape
    for name, ids, mask in (("student_input_ids", s_ids, s_mask), ("teacher_input_ids", t_ids, t_mask)):
        too_short = n_rows > 0 and ids.size(1) <= t  # a rank with no row to score may pass any (0, L)
        if ids.dim() != 2 or ids.size(0) != n_rows or too_short or mask.shape != ids.shape:
            raise ValueError(
                f"{name} {tuple(ids.shape)} (with its attention mask {tuple(mask.shape)}) must be (B, L) with B = "
                f"{n_rows} and L > T = {t} (at least one prompt token before the completion)."
            )
        if n_rows and t and not torch.equal(ids[:, -t:], completion_ids.to(ids.device)):
            raise ValueError(f"The last T={t} columns of {name} must be completion_ids (splice, never re-render).")
