"""The data the credit stages hand each other, in pipeline order: one import for every stage, no stage imports another
for a type.

[`Rollout`] and [`SiblingGroup`] (siblings) -> [`TraceStep`] and [`Evidence`] (the reference wing's sanitized view of a
group) -> [`CreditReference`] (one group's teacher context) -> [`CreditResult`] (what the pipeline made of a batch).
Torch-free: tensors are annotations only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from trl_sgcd.credit.scoring.scorer import DenseScores
    from trl_sgcd.credit.stats import CreditStats

__all__ = ["CreditReference", "CreditResult", "Evidence", "Rollout", "SiblingGroup", "TraceStep", "scored_rows"]


@dataclass
class Rollout:
    """
    One policy rollout as seen by the credit pipeline.

    Args:
        index (`int`):
            Row of the rollout in the (gathered) generation batch.
        prompt (`str` or `list[dict]`):
            The task prompt: a plain string or a list of chat messages.
        completion (`str` or `list[dict]`):
            The generated completion: a plain string or a list of messages (assistant turns, tool calls, tool
            observations).
        reward (`float`):
            Total verifier reward (NaN when unscorable).
        row (`dict`, *optional*):
            The other dataset columns of this rollout's example (e.g. `task_id`, `gold_answer`).
    """

    index: int
    prompt: Any
    completion: Any
    reward: float
    row: dict = field(default_factory=dict)


@dataclass
class SiblingGroup:
    """
    The `num_generations` rollouts sampled for one prompt, with their binary outcomes.

    Args:
        group_index (`int`):
            Index g of the group; its rollouts are rows `[g * G, (g + 1) * G)` of the gathered batch.
        rollouts (`list[Rollout]`):
            The sibling rollouts, in batch order.
        success (`list[bool]`):
            Outcome of each rollout (`reward >= threshold`).
    """

    group_index: int
    rollouts: list[Rollout]
    success: list[bool]

    @property
    def is_mixed(self) -> bool:
        """Whether the group holds at least one success and at least one failure."""
        return 0 < self.num_success < len(self.success)

    @property
    def num_success(self) -> int:
        """Number of successful siblings."""
        return sum(bool(s) for s in self.success)

    @property
    def prompt(self) -> Any:
        """The shared task prompt (that of the first rollout)."""
        return self.rollouts[0].prompt if self.rollouts else None


@dataclass
class TraceStep:
    """One policy-visible step: `"say"` (assistant text), `"call"` (tool call), `"obs"` (tool/user/env output)."""

    kind: str
    text: str
    name: str = ""
    arg_keys: tuple[str, ...] = ()
    is_error: bool = False


@dataclass
class Evidence:
    """
    Sanitized sibling evidence of one mixed group.

    Args:
        task (`str`): sanitized task instruction (never truncated).
        traces (`list[str]`): sanitized, rendered traces of the selected siblings.
        outcomes (`list[bool]`): outcome of each selected sibling.
        sibling_indices (`list[int]`): positions of the selected siblings within the group.
        masked_literals (`list[str]`): original literals masked anywhere in the group's evidence.
        digest (`str`): sha256 of the sanitized content (cache key, together with the model name).
        steps (`list[list[TraceStep]]`): sanitized structured steps of every sibling (for the contrast builder).
        success (`list[bool]`): outcome of every sibling of the group.
    """

    task: str
    traces: list[str]
    outcomes: list[bool]
    sibling_indices: list[int]
    masked_literals: list[str]
    digest: str
    steps: list[list[TraceStep]] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)


@dataclass
class CreditReference:
    """
    Credit reference of one sibling group (teacher-side context only).

    Args:
        text (`str`): the reference, capped at `max_reference_tokens` (`""` when `source="none"`).
        sections (`dict[str, str]`): section title -> body.
        masked_literals (`list[str]`): literals masked in the evidence and the reference (their tokens get no credit).
        source (`str`): `"llm"`, `"contrast"`, `"fallback"` (contrast text because the LLM failed) or `"none"` (no
            reference: the group keeps W = 1).
        latency_s (`float`): time spent building it (LLM wall time, retries included).
        cost_usd (`float` or `None`): LLM cost; `None` when unknown.
        prompt_tokens (`int` or `None`): LLM prompt tokens.
        completion_tokens (`int` or `None`): LLM completion tokens.
        group_index (`int`): index of the sibling group.
    """

    text: str
    sections: dict[str, str]
    masked_literals: list[str]
    source: str
    latency_s: float = 0.0
    cost_usd: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    group_index: int = -1


def scored_rows(references: list[CreditReference | None]) -> list[int]:
    """Rows that get a teacher: those with a non-empty reference whose source is not `"none"`."""
    return [i for i, ref in enumerate(references) if ref is not None and ref.source != "none" and ref.text]


@dataclass
class CreditResult:
    r"""
    What the credit pipeline made of one generation batch (this rank's rows).

    Args:
        advantages (`torch.Tensor` of shape `(B, T)`): what TRL's surrogate receives (A * W for the credit modes).
        weights (`torch.Tensor` of shape `(B, T)`): the credit weights W (1 where a row got no credit).
        references (`list[CreditReference | None]`): each row's teacher context (`None`: no teacher).
        rows (`list[int]`): the rows scored with a teacher ([`scored_rows`] of `references`).
        stats ([`CreditStats`]): sums and maxima over the scored rows (reduced over ranks by
            [`~trl_sgcd.credit.pipeline.CreditPipeline.run`]; this rank's own from `compute_credit`).
        extra_loss_inputs (`dict[str, torch.Tensor]`): `(B, T, K)` teacher targets and the `(B, T)` mask for the
            mode's extra loss (empty when it has none).
        scores ([`DenseScores`] or `None`): the dense scores of `rows`; `None` when no rank scored anything.
        eligible (`torch.Tensor` of shape `(R, T)` or `None`): credit-eligible tokens of `rows`.
        fallback_prefix (`int`): rows whose teacher prompt used the token-level fallback.
        scoring_time_s (`float`): wall time of the dense scoring.
        metrics (`dict[str, float]`): the batch's `sgcd/` metrics ([`~trl_sgcd.credit.pipeline.CreditPipeline.run`]).
    """

    advantages: Tensor
    weights: Tensor
    references: list
    rows: list[int]
    stats: CreditStats
    extra_loss_inputs: dict[str, Tensor] = field(default_factory=dict)
    scores: DenseScores | None = None
    eligible: Tensor | None = None
    fallback_prefix: int = 0
    scoring_time_s: float = 0.0
    metrics: dict = field(default_factory=dict)
