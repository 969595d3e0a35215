"""What the demo records of its own SGCD run: the credit weights of the scored rollouts, and where they landed.

`recording_trainer_class()` is `SGCDTrainer` plus one bookkeeping step after each generation batch: for every rollout
that got a credit reference it keeps the weights of its eligible tokens (for the histogram) and its localization
against the ground-truth decisive tokens of the airline task (`trl_sgcd.envs.decisive`, metrics of
`trl_sgcd.credit.localization`), so the demo can print the credit-mass lift of its own run next to pass@1.
"""

from __future__ import annotations


def rollout_records(
    *, inputs, completion_ids, completion_mask, tool_mask, weights, references, tokenizer, step: int
) -> list[dict]:
    """Per scored row (a non-empty reference): its eligible weights and `rollout_localization` against the decisive
    tokens of its airline task. Rows of other environments (no `task_id`) keep only their weights."""
    import torch

    from trl_sgcd.credit.localization import rollout_localization
    from trl_sgcd.credit.teacher import literal_token_mask
    from trl_sgcd.envs.airline_tasks import get_task
    from trl_sgcd.envs.decisive import decisive_token_mask

    mask = completion_mask.bool().cpu()  # (B, T)
    tools = torch.ones_like(mask) if tool_mask is None else tool_mask.bool().cpu()  # (B, T)
    ids = completion_ids.cpu()
    records = []
    for i, ref in enumerate(references):
        if ref is None or ref.source == "none" or not ref.text:
            continue
        literal = literal_token_mask(ids[i : i + 1], [list(ref.masked_literals)], tokenizer)[0].cpu()
        eligible = mask[i] & tools[i] & ~literal  # (T,)
        w = weights[i].float().cpu()  # (T,)
        record = {"step": step, "weights": w[eligible].tolist(), "localization": None}
        row = inputs[i] if i < len(inputs) else {}
        if row.get("task_id") is not None:
            try:
                task = get_task(row["task_id"], seed=int(row.get("seed", 0)))
            except KeyError:
                task = None
            if task is not None:
                decisive = decisive_token_mask(
                    task, ids[i].tolist(), tools[i].long().tolist(), tokenizer, completion_mask=mask[i].long().tolist()
                )
                record["localization"] = rollout_localization(w.numpy(), eligible.numpy(), decisive)
        records.append(record)
    return records


def recording_trainer_class():
    """`SGCDTrainer` that appends, per generation batch, the `rollout_records` of its scored rows to `credit_log`."""
    from trl_sgcd.trainer import SGCDTrainer

    class RecordingSGCDTrainer(SGCDTrainer):
        def _generate_and_score_completions(self, inputs):
            self._credit_last_batch = None
            output = super()._generate_and_score_completions(inputs)
            last = self._credit_last_batch
            if not hasattr(self, "credit_log"):
                self.credit_log = []
            if last is not None and self.model.training:
                records = rollout_records(
                    inputs=inputs,
                    completion_ids=output["completion_ids"],
                    completion_mask=output["completion_mask"],
                    tool_mask=output.get("tool_mask"),
                    weights=last["weights"],
                    references=last["references"],
                    tokenizer=getattr(self, "_tokenizer", self.processing_class),
                    step=self.state.global_step + 1,
                )
                self.credit_log.append({"step": self.state.global_step + 1, "rows": records})
            return output

    return RecordingSGCDTrainer


def lift_summary(credit_log: list[dict]) -> dict | None:
    """`trl_sgcd.credit.localization.summarize` over the run's scored airline rollouts, or `None` without any."""
    from trl_sgcd.credit.localization import summarize

    rows = [r["localization"] for e in credit_log for r in e["rows"] if r["localization"] is not None]
    if not rows:
        return None
    summary = summarize(rows, num_resamples=1000)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in summary.items()}


def format_lift(summary: dict | None) -> str:
    """One line: the credit-mass lift of the run (median and 95% bootstrap interval over its scored rollouts)."""
    if summary is None:
        return "credit lift: n/a (no rollout of this run got a credit reference)"
    med, lo, hi, n = summary["lift"]
    pooled = summary["pooled_lift"][0]
    if n == 0:
        return (
            f"credit lift: n/a ({summary['num_rollouts']} scored rollouts, none with credit on an eligible "
            "decisive token's rollout)"
        )
    return (
        f"credit lift (W - 1 mass on decisive tokens / their share; 1 = no localisation): median {med:.2f} "
        f"[{lo:.2f}, {hi:.2f}] over {n} of {summary['num_rollouts']} scored rollouts, pooled {pooled:.2f}"
    )
