"""The credit pipeline of one generation batch, as the trainer calls it: TRL's output in, advantages out.

[`CreditPipeline.run`] runs the stages in order on one batch; it never sees the trainer, only a [`CreditBatch`] (TRL's
tensors, texts, the model and the prompt renderer) and a [`~trl_sgcd.credit.comm.Comm`] for what crosses ranks:

1. sibling groups, cut from the gathered batch (a group may span ranks);
2. references: each group that gets a teacher is built once, by its owner rank, and every rank receives them all
   (the mode record says which groups get a teacher and which context);
3. [`CreditPipeline.compute_credit`] on this rank's rows: teacher prompts (spliced ids), dense scoring (every rank
   runs the same number of forwards), saliency, weights, the advantage the mode hands TRL, the extra-loss inputs;
4. statistics reduced over ranks, the `sgcd/` metrics, the credit table (main rank), the validity checks and the
   one-line "SGCD changed nothing" reason.

The pipeline keeps its own state (the reference builder's counters, the inert-step count of the validity check):
[`CreditPipeline.state_dict`] for checkpoints. [`CreditPipeline.extra_loss`] turns the extra-loss inputs into the loss
term at the loss step (`direct_sd`, `sdpo`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.utils import logging

from trl_sgcd.credit.comm import Comm
from trl_sgcd.credit.modes import CreditMode, credit_mode_of
from trl_sgcd.credit.reference.builder import (
    SiblingReferenceBuilder,
    merge_step_metrics,
    sibling_contexts,
)
from trl_sgcd.credit.reference.sanitize import private_values
from trl_sgcd.credit.report.table import CreditTableRecorder
from trl_sgcd.credit.scoring.distill_losses import sdpo_distillation_loss, teacher_matching_loss
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer
from trl_sgcd.credit.scoring.teacher import literal_token_mask, splice_teacher_inputs, teacher_prompt_ids, unpad_left
from trl_sgcd.credit.siblings import build_sibling_groups
from trl_sgcd.credit.stats import (
    CreditStats,
    check_validity,
    credit_metrics,
    has_tool_call,
    inert_reason,
    local_credit_stats,
    peak_memory_gb,
)
from trl_sgcd.credit.types import CreditReference, CreditResult, SiblingGroup, scored_rows
from trl_sgcd.credit.weighting.saliency import credit_saliency
from trl_sgcd.credit.weighting.weights import apply_credit_weights, credit_weights, loss_mask, uniform_credit_weights

logger = logging.get_logger(__name__)

# The tensors of TRL's generation output that `compute_credit` takes (keyword arguments of the same names).
BATCH_TENSORS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask", "advantages")
# The extra-loss inputs `compute_credit` adds to TRL's output (sliced into micro-batches by TRL like the rest).
TARGET_KEYS = (
    "credit_teacher_topk_ids",
    "credit_teacher_topk_logprobs",
    "credit_sd_mask",
    "credit_teacher_tail_logprobs",
)


@dataclass
class CreditBatch:
    """
    One generation batch as the trainer hands it to [`CreditPipeline.run`] (this rank's rows unless said otherwise).

    Args:
        output (`dict`): TRL's generation output (the tensors named in `BATCH_TENSORS`; `advantages` `(B,)`).
        prompts (`list`): the `B` prompts (messages or text) the prompt ids were rendered from.
        rows (`list[dict]`): the `B` dataset rows (for the private values the sanitizer masks).
        all_completions (`list`): the completions of the whole batch, every rank's, in rank order.
        rewards (`torch.Tensor` of shape `(N,)`): total rewards of the whole batch.
        model: the policy, scored forward-only.
        render (`Callable`): TRL's prompt renderer, `list of prompts -> list of token-id lists`.
        autocast: context manager the scoring runs in (the trainer passes accelerate's autocast).
        step (`int`): the optimizer step that first trains on this batch (the credit table's step and the log line).
        has_tools (`bool`): the trainer has tools or an environment (for the "changed nothing" reason).
    """

    output: dict
    prompts: list
    rows: list
    all_completions: list
    rewards: Tensor
    model: object = None
    render: Callable | None = None
    autocast: Callable = nullcontext
    step: int = 0
    has_tools: bool = False


class CreditPipeline:
    r"""
    The credit stages of one mode, with their settings.

    Args:
        args ([`SGCDConfig`]): the `credit_*` settings (and `temperature`).
        tokenizer: the policy tokenizer.
        scorer ([`DenseDivergenceScorer`], *optional*): built from `args` when omitted (top-K `credit_sdpo_top_k`
            for `sdpo` with `credit_sdpo_distillation_mode="topk_logits"`, else `credit_top_k`).
        reference_builder ([`SiblingReferenceBuilder`], *optional*): built from `args` when omitted.
        num_generations (`int`, *optional*, defaults to `8`): G, for the W&B credit table's groups.
    """

    def __init__(self, args, tokenizer, *, scorer=None, reference_builder=None, num_generations: int = 8):
        self.args, self.tokenizer, self.num_generations = args, tokenizer, num_generations
        self.inert_steps = 0  # consecutive batches whose weights carried no credit (the validity check's counter)
        self.mode: CreditMode = credit_mode_of(args)
        if scorer is None:
            scorer = DenseDivergenceScorer.from_config(args)
            if self.mode.extra_loss == "sdpo":
                scorer = DenseDivergenceScorer(
                    top_k=args.credit_sdpo_top_k,
                    divergence=scorer.divergence,
                    chunk_size=scorer.chunk_size,
                    temperature=scorer.temperature,
                    batch_size=scorer.batch_size,
                )
        self.scorer = scorer
        self.reference_builder = reference_builder or SiblingReferenceBuilder.from_config(args, tokenizer=tokenizer)
        # W&B table of each batch's references and per-token weights (first groups only), when reporting to W&B.
        self.table = (
            CreditTableRecorder(tokenizer, cap=args.credit_cap, num_generations=num_generations)
            if self.mode.scores and args.credit_log_table and "wandb" in (args.report_to or [])
            else None
        )

    # ------------------------------------------------------------------------------------------------- one batch
    def run(self, batch: CreditBatch, comm: Comm) -> CreditResult:
        """The credit of one generation batch, every stage in order (see the module docstring); every rank calls it.

        Returns this rank's [`CreditResult`] with its statistics reduced over ranks and the batch's `sgcd/` metrics.
        """
        args, out, n_local = self.args, batch.output, len(batch.prompts)
        offset, device = comm.rank * n_local, out["completion_ids"].device
        # 1. Siblings: gather texts and private values, then cut into groups of G.
        private = comm.gather([private_values(row, args.credit_private_columns) for row in batch.rows])
        prompts = comm.gather(list(batch.prompts))
        groups = self.sibling_groups(
            prompts, batch.all_completions, batch.rewards.tolist(), private, num_generations=self.num_generations
        )
        # 2. References: each group built exactly once, by its owner rank; every rank receives all of them.
        t0 = time.perf_counter()
        references = dict(comm.gather(self.references([g for g in groups if comm.owner(g.group_index) == comm.rank])))
        steps = comm.gather([self.reference_step_metrics()])  # every rank's reference-builder counters
        latency = time.perf_counter() - t0
        local_refs = [references.get(offset + i) for i in range(n_local)]
        # 3. Credit of this rank's rows; every rank runs the largest count of scoring forwards.
        num_batches = comm.max(torch.tensor([self.num_score_batches(local_refs)], device=device))
        result = self.compute_credit(
            model=batch.model,
            **{key: out.get(key) for key in BATCH_TENSORS},
            prompts=batch.prompts,
            references=local_refs,
            render=batch.render,
            min_batches=int(num_batches.max()),
            autocast=batch.autocast,
        )
        # 4. Statistics over ranks, metrics, table, validity.
        sums, maxima = result.stats.vectors(device)
        result.stats = CreditStats.from_vectors(comm.sum(sums), comm.max(maxima))
        fallback = int(comm.sum(torch.tensor([float(result.fallback_prefix)], device=device)).sum().item())
        result.metrics = self.metrics(result.stats, groups, references.values(), latency, fallback, steps)
        if comm.rank == 0:
            self.record_table(batch.step, batch.prompts, out, result, out["advantages"], batch.rewards, offset)
        self.inert_steps = self.check_validity(result.stats, groups, result.weights, self.inert_steps)
        if comm.rank == 0 and (why := self.inert_reason(result.stats, groups, has_tools=batch.has_tools)):
            logger.warning(f"SGCD step {batch.step}: {why}.")
        return result

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the pipeline: the reference builder's counters and the inert-step count."""
        return {"reference_builder": self.reference_builder.state_dict(), "inert_steps": self.inert_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore [`~CreditPipeline.state_dict`] (missing keys: a fresh state)."""
        self.reference_builder.load_state_dict(state.get("reference_builder", {}))
        self.inert_steps = int(state.get("inert_steps", 0))

    # ------------------------------------------------------------------------------------------ groups and references
    def sibling_groups(self, prompts, completions, rewards, rows, *, num_generations: int) -> list[SiblingGroup]:
        """Cut a gathered batch into sibling groups (success: total reward >= `credit_success_threshold`)."""
        return build_sibling_groups(
            prompts,
            completions,
            rewards,
            rows,
            num_generations=num_generations,
            success_threshold=self.args.credit_success_threshold,
        )

    def teacher_groups(self, groups: Sequence[SiblingGroup]) -> list[SiblingGroup]:
        """The groups whose rows may get a teacher in this mode."""
        return [g for g in groups if self.mode.group_gets_teacher(g.num_success, len(g.rollouts))]

    def references(self, groups: Sequence[SiblingGroup]) -> list[tuple[int, CreditReference]]:
        """`(global row, reference)` for the rows of `groups` that get a teacher context, in row order.

        `context="reference"`: one credit reference per group (reference builder), shared by its rows.
        `context="sibling"`: per row, another successful sibling ([`sibling_contexts`], never the row itself).
        """
        groups = self.teacher_groups(groups)
        pairs = []
        if self.mode.context == "sibling":
            for group in groups:
                contexts = sibling_contexts(
                    group,
                    private_columns=self.args.credit_private_columns,
                    observation_max_chars=self.args.credit_observation_max_chars,
                    tokenizer=self.tokenizer,
                    max_tokens=self.args.credit_reference_max_tokens,
                )
                pairs.extend((r.index, ref) for r, ref in zip(group.rollouts, contexts) if ref is not None)
        elif self.mode.context == "reference":  # every rank builds (maybe nothing): its step metrics reset
            for group, ref in zip(groups, self.reference_builder.build(groups)):
                pairs.extend((r.index, ref) for r in group.rollouts)
        return pairs

    def num_score_batches(self, references: Sequence[CreditReference | None]) -> int:
        """Scoring micro-batches this rank needs (the trainer makes every rank run the largest count)."""
        return self.scorer.num_batches(len(scored_rows(references)))

    # --------------------------------------------------------------------------------------------------- the credit
    def compute_credit(
        self,
        *,
        model,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        tool_mask: Tensor | None,
        advantages: Tensor,
        prompts: Sequence,
        references: Sequence[CreditReference | None],
        render: Callable[[list], list[list[int]]],
        min_batches: int | None = None,
        autocast=nullcontext,
    ) -> CreditResult:
        r"""
        Teacher prompts, dense scores, saliency, weights and the mode's advantage for this rank's rows.

        Args:
            model: the policy, scored forward-only.
            prompt_ids, prompt_mask (`torch.Tensor` of shape `(B, P)`): TRL's left-padded prompts.
            completion_ids, completion_mask, tool_mask (`torch.Tensor` of shape `(B, T)`): TRL's completions.
            advantages (`torch.Tensor` of shape `(B,)`): GRPO's advantages.
            prompts (`Sequence`): the `B` prompts (messages or text) the ids were rendered from.
            references (`Sequence[CreditReference | None]`): each row's teacher context, used as given (capped where
                it was made).
            render (`Callable`): TRL's prompt renderer, `list of prompts -> list of token-id lists` (all `B` rows).
            min_batches (`int`, *optional*): scoring micro-batches to run at least (equal counts on every rank);
                defaults to this rank's own count.
            autocast: context manager the scoring runs in (the trainer passes accelerate's autocast).
        """
        B, T = completion_ids.shape
        device, references = completion_ids.device, list(references)
        rows = scored_rows(references)
        min_batches = self.num_score_batches(references) if min_batches is None else min_batches
        stats = CreditStats(dict.fromkeys(CreditStats.SUM_KEYS, 0.0), dict.fromkeys(CreditStats.MAX_KEYS, 0.0))
        result = CreditResult(advantages, torch.ones(B, T, device=device), references, rows, stats)
        mask = loss_mask(completion_mask, tool_mask).bool()  # (B, T)
        if min_batches > 0:  # every rank runs the same number of scoring forwards, with rows or without
            teacher_ids = self._teacher_inputs(
                result, prompt_ids, prompt_mask, completion_ids, tool_mask, mask, prompts, render
            )
            c_ids, c_mask = completion_ids[rows], completion_mask[rows]  # (R, T)
            t_ids, t_mask = splice_teacher_inputs(teacher_ids, c_ids, c_mask, pad_token_id=self.tokenizer.pad_token_id)
            t0 = time.perf_counter()
            with autocast():
                result.scores = self.scorer.score(
                    model,
                    torch.cat([prompt_ids[rows], c_ids], dim=1),
                    torch.cat([prompt_mask[rows], c_mask], dim=1),
                    t_ids,
                    t_mask,
                    c_ids,
                    c_mask,
                    min_batches=min_batches,
                    return_teacher_topk=self.mode.teacher_targets,
                )
            result.scoring_time_s = time.perf_counter() - t0
        if rows:
            self._weigh(result, mask)
        result.stats.maxima["scoring_time_s"] = result.scoring_time_s
        result.advantages = self._advantages(result, advantages)
        result.extra_loss_inputs = self._loss_inputs(result, B, T, device)
        return result

    def _teacher_inputs(
        self, result, prompt_ids, prompt_mask, completion_ids, tool_mask, mask, prompts, render
    ) -> list:
        """Teacher prompt ids of the scored rows (their completions are spliced on later); sets `result.eligible`."""
        rows, tok = result.rows, self.tokenizer
        if not rows:
            return []
        texts = {i: result.references[i].text for i in rows}  # capped where they were made (builder, sibling contexts)
        student_prompts = unpad_left(prompt_ids[rows], prompt_mask[rows])
        teacher_ids, result.fallback_prefix = teacher_prompt_ids(
            prompts, texts, student_prompts, render=render, tokenizer=tok
        )
        # Masked literals the student cannot see get no credit; those in its prompt or an earlier tool observation do.
        literals = [list(result.references[i].masked_literals) for i in rows]
        unseen = literal_token_mask(
            completion_ids[rows],
            literals,
            tok,
            prompt_ids=student_prompts,
            tool_mask=None if tool_mask is None else tool_mask[rows],
        )
        result.eligible = mask[rows] & ~unseen.to(mask.device)  # (R, T)
        return teacher_ids

    def _weigh(self, result: CreditResult, mask: Tensor) -> None:
        """Saliency and weights of the scored rows, the weights the mode keeps, and the batch statistics."""
        args, scores, eligible = self.args, result.scores, result.eligible
        saliency = credit_saliency(
            scores.divergence,
            scores.teacher_entropy,
            eligible,
            spike_z=args.credit_spike_z,
            saturation_z=args.credit_saturation_z,
            reset_z=args.credit_reset_z,
            entropy_rise=args.credit_entropy_rise,
            max_span=args.credit_max_span,
            min_divergence=args.credit_min_divergence,
        )  # (R, T)
        w = credit_weights(saliency, gamma=args.credit_gamma, cap=args.credit_cap, eligible_mask=eligible)  # (R, T)
        if self.mode.weights == "uniform":
            w = uniform_credit_weights(w, eligible)
        if self.mode.weights != "none":
            result.weights[result.rows] = w.to(result.weights.device)
        off_mask = int(((result.weights > 1.0) & ~mask.to(result.weights.device)).sum())
        result.stats = local_credit_stats(
            divergence=scores.divergence,
            entropy=scores.teacher_entropy,
            saliency=saliency,
            weights=w,
            eligible=eligible,
            weights_off_loss_mask=off_mask,
            cap=args.credit_cap,
            scoring_time_s=result.scoring_time_s,
            peak_memory_gb=peak_memory_gb(),
        )

    def _advantages(self, result: CreditResult, advantages: Tensor) -> Tensor:
        """The `(B, T)` advantage TRL's surrogate receives in this mode."""
        if self.mode.advantage not in ("sdpo", "sdpo_sampled_token"):
            return apply_credit_weights(advantages, result.weights)  # (B, T); W = 1 unless the mode keeps credit
        # SDPO: GRPO's surrogate keeps a share 1 - w of the advantage (0 for pure self-distillation, the default).
        keep = 1.0 - self.args.credit_sdpo_distillation_weight
        new = apply_credit_weights(advantages * keep, torch.ones_like(result.weights))  # (B, T)
        if self.mode.advantage == "sdpo_sampled_token" and result.rows:  # the teacher/student log-ratio joins it
            scores = result.scores
            ratio = (scores.teacher_logprobs - scores.student_logprobs) * result.eligible  # (R, T)
            new[result.rows] += self.args.credit_sdpo_distillation_weight * ratio.to(new.device, new.dtype)
        return new

    def _loss_inputs(self, result: CreditResult, B: int, T: int, device) -> dict[str, Tensor]:
        """Teacher top-K targets `(B, T, K)`, the teacher's tail `(B, T)` and the distilled-token mask `(B, T)` for
        the mode's extra loss."""
        if not self.mode.teacher_targets:
            return {}
        rows, scores = result.rows, result.scores
        K = scores.teacher_topk_ids.size(-1) if rows else self.scorer.top_k  # rows without a teacher: mask 0
        ids = torch.zeros(B, T, K, dtype=torch.long, device=device)  # (B, T, K)
        logps = torch.zeros(B, T, K, device=device)  # (B, T, K)
        mask = torch.zeros(B, T, device=device)  # (B, T)
        tail = torch.zeros(B, T, device=device)  # (B, T)
        if rows:
            ids[rows] = scores.teacher_topk_ids.to(device)
            logps[rows] = scores.teacher_topk_logprobs.to(device)
            mask[rows] = result.eligible.float().to(device)
            tail[rows] = scores.teacher_tail_logprobs.to(device)
        return dict(zip(TARGET_KEYS, (ids, logps, mask, tail)))

    # ------------------------------------------------------------------------------------ logs and validity checks
    def metrics(self, stats: CreditStats, groups, references, latency_s, fallback_prefix, reference_steps) -> dict:
        """The `sgcd/` metrics of one batch from globally reduced `stats` (see [`credit_metrics`]), with the
        reference builder's step metrics of every rank (`reference_steps`, merged)."""
        num_mixed = sum(g.is_mixed for g in groups)
        return merge_step_metrics(reference_steps) | credit_metrics(
            stats,
            num_groups=len(groups),
            num_mixed=num_mixed,
            references=references,
            latency_s=latency_s,
            fallback_prefix=fallback_prefix,
        )

    def reference_step_metrics(self) -> dict[str, float]:
        """This rank's reference-builder counters of the last build (`{}` when the mode uses no builder)."""
        return self.reference_builder.step_metrics() if self.mode.uses_reference_builder else {}

    def check_validity(self, stats: CreditStats, groups, weights: Tensor, inert_steps: int) -> int:
        """The paper's run-validity checks on a batch (`stats` reduced over ranks, all its `groups`): warn, or raise
        with `credit_strict`. Returns the updated inert-step counter."""
        return check_validity(
            stats,
            strict=self.args.credit_strict,
            weights_carry_credit=self.mode.weights_carry_credit,
            num_mixed=sum(g.is_mixed for g in groups),
            weights_require_grad=weights.requires_grad,
            inert_steps=inert_steps,
            inert_limit=self.args.credit_inert_steps,
        )

    def inert_reason(self, stats: CreditStats, groups, *, has_tools: bool) -> str | None:
        """Why credit changed nothing on this batch (see [`inert_reason`]), or `None` when it acted or the mode
        gives teachers to other than mixed groups (`sdpo`). `has_tools`: the trainer has tools or an environment."""
        if self.mode.teacher_groups != "mixed":
            return None
        tool_calls = any(has_tool_call(r.completion) for g in groups for r in g.rollouts) if has_tools else None
        return inert_reason(
            stats,
            num_mixed=sum(g.is_mixed for g in groups),
            tool_calls=tool_calls,
            weights_carry_credit=self.mode.weights_carry_credit,
        )

    def record_table(self, step: int, prompts, output: dict, result: CreditResult, advantages, rewards, offset: int):
        """Add this rank's rows to the W&B credit table (when it is on); `rewards` `(N,)` of the gathered batch."""
        if self.table is None:
            return
        self.table.record(
            step=step,
            prompts=prompts,
            completion_ids=output["completion_ids"],
            completion_mask=output["completion_mask"],
            tool_mask=output.get("tool_mask"),
            weights=result.weights,
            rewards=rewards[offset : offset + len(prompts)],
            advantages=advantages,
            references=result.references,
            row_offset=offset,
        )

    # ---------------------------------------------------------------------------------------------- the extra loss
    def extra_loss(self, model, inputs: dict, *, temperature: float) -> tuple[Tensor, str, float] | None:
        """The mode's extra loss on a training micro-batch: `(loss, metric name, coefficient)`, or `None`.

        `direct_sd`: the teacher-matching KL(q || p) of the paper's failing ablation. `sdpo` with `"topk_logits"`:
        SDPO's generalized JSD ([`sdpo_distillation_loss`]). Both have gradient through the student.
        """
        if not self.mode.extra_loss or TARGET_KEYS[0] not in inputs:
            return None
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        targets = [inputs[k] for k in (TARGET_KEYS[2], TARGET_KEYS[0], TARGET_KEYS[1], TARGET_KEYS[3])]
        chunk = self.args.credit_chunk_size
        if self.mode.extra_loss == "teacher_kl":
            loss = teacher_matching_loss(
                model, input_ids, attention_mask, *targets, temperature=temperature, chunk_size=chunk
            )
            return loss, "sgcd/direct_sd_loss", self.args.credit_direct_sd_coef
        loss = sdpo_distillation_loss(
            model,
            input_ids,
            attention_mask,
            *targets,
            alpha=self.args.credit_sdpo_alpha,
            temperature=temperature,
            chunk_size=chunk,
        )
        return loss, "sgcd/sdpo_distillation_loss", self.args.credit_sdpo_distillation_weight


__all__ = ["BATCH_TENSORS", "CreditBatch", "CreditPipeline"]
