"""Batch-level credit helpers: total rewards, per-batch statistics and metrics, the run-validity checks.

Pure functions over tensors and lists; none of them holds the trainer.
"""

from __future__ import annotations

import resource
import warnings
from dataclasses import dataclass, field

import torch


def total_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the reward functions, NaN where every function returned None (TRL's own rule).

    Args:
        rewards_per_func (`torch.Tensor` of shape `(N, F)`):
            Rewards gathered over all ranks.
        reward_weights (`torch.Tensor` of shape `(F,)`):
            TRL's reward weights.
    """
    weights = reward_weights.to(rewards_per_func.device).unsqueeze(0)  # (1, F)
    rewards = (rewards_per_func * weights).nansum(dim=1)  # (N,)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards


@dataclass
class CreditStats:
    """Per-rank sums and maxima of one generation batch; reduced across ranks by the trainer."""

    sums: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)

    SUM_KEYS = (
        "rows_scored",
        "scored_tokens",
        "credit_tokens",
        "spans",
        "divergence",
        "entropy",
        "weight",
        "weight_at_cap",
        "weights_off_loss_mask",
    )
    MAX_KEYS = ("divergence_max", "entropy_max", "weight_max", "scoring_time_s", "peak_memory_gb")

    def vectors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.tensor([float(self.sums.get(k, 0.0)) for k in self.SUM_KEYS], device=device)
        m = torch.tensor([float(self.maxima.get(k, 0.0)) for k in self.MAX_KEYS], device=device)
        return s, m

    @classmethod
    def from_vectors(cls, sums: torch.Tensor, maxima: torch.Tensor) -> CreditStats:
        return cls(dict(zip(cls.SUM_KEYS, sums.tolist())), dict(zip(cls.MAX_KEYS, maxima.tolist())))


def count_spans(saliency: torch.Tensor) -> int:
    """Number of contiguous runs of s > 0 (a run starts where s > 0 and the previous token has s == 0)."""
    on = saliency > 0  # (B, T)
    starts = on.clone()
    starts[:, 1:] &= ~on[:, :-1]
    return int(starts.sum())


def local_credit_stats(
    *,
    divergence: torch.Tensor,
    entropy: torch.Tensor,
    saliency: torch.Tensor,
    weights: torch.Tensor,
    eligible: torch.Tensor,
    weights_off_loss_mask: int,
    cap: float,
    scoring_time_s: float,
    peak_memory_gb: float,
) -> CreditStats:
    """Sums and maxima over the scored rows' eligible tokens (all tensors `(B_scored, T)`).

    `weights_off_loss_mask` is the number of tokens of the whole batch with W > 1 where the loss mask TRL uses
    (`completion_mask * tool_mask`) is 0: tool observations, padding or prompt tokens must never carry credit.
    """
    e = eligible.bool()
    n = int(e.sum())
    stats = CreditStats()
    stats.sums = {
        "rows_scored": float(divergence.size(0)),
        "scored_tokens": float(n),
        "credit_tokens": float((saliency[e] > 0).sum()) if n else 0.0,
        "spans": float(count_spans(saliency * e)),
        "divergence": float(divergence[e].sum()) if n else 0.0,
        "entropy": float(entropy[e].sum()) if n else 0.0,
        "weight": float(weights[e].sum()) if n else 0.0,
        "weight_at_cap": float((weights[e] >= cap - 1e-6).sum()) if n else 0.0,
        "weights_off_loss_mask": float(weights_off_loss_mask),
    }
    stats.maxima = {
        "divergence_max": float(divergence[e].max()) if n else 0.0,
        "entropy_max": float(entropy[e].max()) if n else 0.0,
        "weight_max": float(weights[e].max()) if n else 0.0,
        "scoring_time_s": scoring_time_s,
        "peak_memory_gb": peak_memory_gb,
    }
    return stats


def credit_metrics(
    stats: CreditStats,
    *,
    num_groups: int,
    num_mixed: int,
    references,
    latency_s: float,
    fallback_prefix: int,
) -> dict:
    """The `sgcd/` metrics of one generation batch, from globally reduced statistics.

    `references` are the batch's teacher contexts (any iterable of [`CreditReference`], rows of a group may share
    one): sources, coverage and cost count one per group. An unknown cost (e.g. a local server) is not logged as 0.
    """
    s, m = stats.sums, stats.maxima
    per_group = {ref.group_index: ref for ref in references}
    sources: dict[str, int] = {}
    for ref in per_group.values():
        sources[ref.source] = sources.get(ref.source, 0) + 1
    costs = [ref.cost_usd for ref in per_group.values()]
    cost_usd = sum(costs) if costs and all(c is not None for c in costs) else None
    tokens = max(s["scored_tokens"], 1.0)
    refs = sum(sources.values())
    metrics = {
        "sgcd/mixed_group_fraction": num_mixed / max(num_groups, 1),
        "sgcd/reference_coverage": (refs - sources.get("none", 0)) / max(num_mixed, 1) if num_mixed else 0.0,
        "sgcd/reference_latency_s": latency_s,
        "sgcd/rows_scored": s["rows_scored"],
        "sgcd/scored_tokens": s["scored_tokens"],
        "sgcd/credit_tokens": s["credit_tokens"],
        "sgcd/credit_token_fraction": s["credit_tokens"] / tokens,
        "sgcd/spans": s["spans"],
        "sgcd/divergence_mean": s["divergence"] / tokens,
        "sgcd/divergence_max": m["divergence_max"],
        "sgcd/teacher_entropy_mean": s["entropy"] / tokens,
        "sgcd/teacher_entropy_max": m["entropy_max"],
        "sgcd/weight_mean": s["weight"] / tokens if s["scored_tokens"] else 1.0,
        "sgcd/weight_max": m["weight_max"] if s["scored_tokens"] else 1.0,
        "sgcd/weight_at_cap_fraction": s["weight_at_cap"] / tokens,
        "sgcd/scoring_time_s": m["scoring_time_s"],
        "sgcd/peak_memory_gb": m["peak_memory_gb"],
        "sgcd/teacher_prefix_fallback": float(fallback_prefix),
    }
    for source in ("llm", "contrast", "fallback", "none", "sibling"):
        metrics[f"sgcd/reference_source/{source}"] = float(sources.get(source, 0))
    if cost_usd is not None:
        metrics["sgcd/reference_cost_usd"] = cost_usd
    return metrics


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of `values` over `mask` (rows with no masked token give 0). `(B, T) -> (B,)`"""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def validity_problems(
    stats: CreditStats,
    *,
    weights_carry_credit: bool,
    num_mixed: int,
    weights_require_grad: bool,
    inert_steps: int,
    inert_limit: int,
) -> tuple[list[str], int]:
    """The paper's run-validity checks on one batch (globally reduced `stats`); returns the problems and the updated
    inert-step counter. `weights_carry_credit`: the mode puts W > 1 somewhere, so inert weights are a problem."""
    s, m = stats.sums, stats.maxima
    problems = []
    if s["rows_scored"] > 0 and s["scored_tokens"] > 0 and m["divergence_max"] == 0.0:
        problems.append("the dense features are all zero (teacher and student agree everywhere)")
    if s["weights_off_loss_mask"] > 0:
        problems.append(
            f"{int(s['weights_off_loss_mask'])} tokens outside TRL's loss mask (tool observations, padding) have "
            "credit weights > 1"
        )
    if weights_require_grad:
        problems.append("the credit weights require grad (they must be detached)")
    if num_mixed > 0 and weights_carry_credit:
        inert_steps = 0 if s["credit_tokens"] > 0 else inert_steps + 1
        if inert_steps >= inert_limit:
            problems.append(
                f"the credit weights were inert (no credit token) for {inert_steps} batches while mixed groups existed; "
                f"{INERT_FIXES}"
            )
    return problems, inert_steps


INERT_FIXES = (
    "the usual fixes: a warm start (SFT) so that some rollouts succeed, a scripted sibling (`scripted_sibling=`), "
    "or dynamic sampling (`credit_dynamic_sampling=True`)"
)


def has_tool_call(completion) -> bool:
    """Whether a completion (a string or a list of chat messages) holds at least one assistant tool call."""
    if not isinstance(completion, list):
        return False
    return any(isinstance(m, dict) and m.get("tool_calls") for m in completion)


def inert_reason(
    stats: CreditStats, *, num_mixed: int, tool_calls: bool | None, weights_carry_credit: bool
) -> str | None:
    """Why SGCD changed nothing on this batch (one line for the step log), or `None` when credit acted.

    Args:
        stats (`CreditStats`): the batch's statistics, reduced over ranks.
        num_mixed (`int`): the number of mixed groups (0 < #success < G) in the batch.
        tool_calls (`bool` or `None`): whether any rollout of the batch called a tool; `None` when the trainer has no
            tools (the reason is then never "no tool call").
        weights_carry_credit (`bool`): the mode puts W > 1 somewhere (credit acted = some credit token); otherwise
            credit acted when some row was scored against a teacher.
    """
    s = stats.sums
    if num_mixed == 0:
        return "no mixed group this step (every group all-success or all-failure): SGCD changed nothing"
    acted = s.get("credit_tokens", 0.0) > 0 if weights_carry_credit else s.get("rows_scored", 0.0) > 0
    if acted:
        return None
    if tool_calls is False:
        return "mixed groups but no tool call in any rollout: SGCD changed nothing"
    if s.get("rows_scored", 0.0) == 0:
        return "mixed groups but no rollout was scored (no teacher reference was built): SGCD changed nothing"
    return (
        "mixed groups scored but the divergence stayed below credit_min_divergence (no spike): W = 1 everywhere, "
        "SGCD changed nothing"
    )


def check_validity(stats: CreditStats, *, strict: bool, **kwargs) -> int:
    """Warn about each problem [`validity_problems`] finds (raise a `RuntimeError` when `strict`); returns the
    updated inert-step counter. `kwargs` are those of [`validity_problems`]."""
    problems, inert_steps = validity_problems(stats, **kwargs)
    for problem in problems:
        message = f"SGCD validity check: {problem}."
        if strict:
            raise RuntimeError(message + " (credit_strict=True)")
        warnings.warn(message, stacklevel=3)
    return inert_steps


def peak_memory_gb() -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
