"""Scoring cached rollouts under several credit references and divergences, without training (for `bench_credit.py`).

One student forward and one teacher forward per reference, each over the rollout's own tokens only: the airline
system message with its tool schemas (~1.1k tokens, the same for every prompt and every teacher, since the reference
goes into the user turn) is encoded once and its key/value cache reused. From the completion logits of the two
contexts, the scorer's own per-chunk math (`trl_sgcd.credit.scoring.divergence`) gives the divergence and teacher entropy for
every divergence at once; `tests/test_bench_credit.py` checks that this equals `trl_sgcd.DenseDivergenceScorer.score`.
"""

from __future__ import annotations

import copy

import torch


def common_prefix_length(sequences) -> int:
    """Length of the longest common prefix of token id lists."""
    first = sequences[0]
    n = len(first)
    for seq in sequences[1:]:
        n = min(n, len(seq))
        n = next((i for i in range(n) if first[i] != seq[i]), n)
    return n


class PrefixScorer:
    """Completion logits of prompt + completion id lists, with the shared prompt prefix encoded once.

    Args:
        model: causal LM (put in eval mode; no gradient).
        prefix_ids (`list[int]`): ids every scored prompt starts with (at least one prompt token stays outside).
        temperature (`float`): logits are divided by it, as the trainer's scorer does.
    """

    def __init__(self, model, prefix_ids, *, temperature: float):
        self.model, self.temperature = model.eval(), float(temperature)
        self.prefix = list(prefix_ids)
        self._cache = None

    def _prefix_cache(self):
        if self._cache is None and self.prefix:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([self.prefix]), use_cache=True)
            self._cache = out.past_key_values
        return self._cache

    def completion_logits(self, prompt_ids, completion_ids) -> torch.Tensor:
        """float32 logits `(T, V)` / temperature of the positions that predict `completion_ids`."""
        P = len(self.prefix)
        if list(prompt_ids[:P]) != self.prefix or len(prompt_ids) <= P:
            raise ValueError("a prompt does not start with the cached prefix")
        ids = list(prompt_ids[P:]) + list(completion_ids)
        T = len(completion_ids)
        cache = copy.deepcopy(self._prefix_cache()) if P else None
        with torch.no_grad():
            out = self.model(
                input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=cache is not None, logits_to_keep=T + 1
            )
        return out.logits[0, :-1].float() / self.temperature  # (T, V)


def dense_scores(student_log_probs, teacher_logits, completion_ids, *, top_k: int, divergences) -> dict:
    """`{divergence: (d (T,), H (T,))}` from the student's completion log-probabilities (`log_softmax` of its logits,
    left unchanged) and the teacher's completion logits.

    The same quantities as `trl_sgcd.topk_divergence` (the scorer's per-chunk math, whose helpers it calls), with the
    teacher support and the student's log-softmax computed once for all divergences instead of once per divergence.
    """
    from trl_sgcd.credit.scoring.divergence import _reduce_to_support, _support_divergence, _teacher_support

    observed = torch.as_tensor(list(completion_ids), dtype=torch.long)
    support = _teacher_support(teacher_logits.float(), observed, top_k=top_k)
    lp_support, lp_tail = _reduce_to_support(student_log_probs.clone(), support.ids)
    keep = torch.cat([support.valid, support.valid.new_ones(support.valid.size(0), 1)], dim=-1)  # (T, K+2)
    log_p = torch.cat([lp_support, lp_tail.unsqueeze(-1)], dim=-1)  # (T, K+2)
    log_q = torch.cat([support.log_q, support.log_q_tail.unsqueeze(-1)], dim=-1)  # (T, K+2)
    return {name: _support_divergence(log_p, log_q, keep, name) for name in divergences}
