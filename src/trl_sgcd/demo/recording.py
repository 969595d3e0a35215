"""What the demo records of its own SGCD run: the credit weights of the scored rollouts, and where they landed.

`recording_trainer_class()` is `SGCDTrainer` plus one bookkeeping step after each generation batch: for every rollout
that got a credit reference it keeps the weights of its eligible tokens (for the histogram), its localization against
the ground-truth decisive tokens of the airline task (`trl_sgcd.envs.decisive`, metrics of
`trl_sgcd.credit.report.localization`), so the demo can print the credit-mass lift of its own run, and a `view` of it
(token strings, W per token, eligible and decisive flags, its advantage and reference) for the demo's HTML credit
table and the rollout panel of `demo.png`.
"""

from __future__ import annotations


def _task_of(prompt_text: str, seed: int):
    """The airline task whose instruction the rendered prompt holds (rows may come from resampled batches, so the
    prompt, not the position in `inputs`, says which task a row is)."""
    from trl_sgcd.envs.airline_tasks import airline_tasks

    for split in ("train", "test"):
        for task in airline_tasks(split, seed=seed):
            if task["instruction"] in prompt_text:
                return task
    return None


def rollout_records(
    *,
    prompts,
    completion_ids,
    completion_mask,
    tool_mask,
    weights,
    rows,
    eligible,
    tokenizer,
    step: int,
    seed=0,
    advantages=None,
    references=None,
) -> list[dict]:
    """Per scored row: its eligible weights, `rollout_localization` against the decisive tokens of its airline task
    (`None` for rows of other environments, without `task_id`), and its `view`.

    Args:
        prompts (`list[str]`): the decoded prompt of every local row.
        rows (`list[int]`): the local rows scored with a teacher (`CreditResult.rows`).
        eligible (`torch.Tensor` of shape `(R, T)`): their credit-eligible tokens (`CreditResult.eligible`: the loss
            mask minus masked literals).
        weights (`torch.Tensor` of shape `(B, T)`): the credit weights of every local row.
        advantages (`torch.Tensor` of shape `(B, T)` or `(B,)`, *optional*): what TRL's surrogate receives; the row's
            scalar advantage A is read back from it (`sum(A * W) / sum(W)` over eligible tokens).
        references (`list`, *optional*): each local row's teacher context (`CreditResult.references`).

    Returns:
        `list[dict]`: `step`, `weights` (of the eligible tokens), `localization`, and `view`: `tokens` (strings whose
        concatenation is the completion, up to its last completion token), `weights`, `eligible`, `decisive` (one per
        token), `advantage` (or `None`) and `reference` (its text, or `""`).
    """
    from trl_sgcd.credit.report.localization import rollout_localization
    from trl_sgcd.credit.report.table import decode_token_strings
    from trl_sgcd.envs.decisive import decisive_token_mask

    mask = completion_mask.bool().cpu()  # (B, T)
    tools = mask if tool_mask is None else tool_mask.bool().cpu()  # (B, T)
    ids = completion_ids.cpu()
    records = []
    for k, i in enumerate(rows):
        e = eligible[k].bool().cpu()  # (T,)
        w = weights[i].float().cpu()  # (T,)
        record = {"step": step, "weights": w[e].tolist(), "localization": None}
        task = _task_of(prompts[i], seed)
        decisive = [False] * len(w)
        if task is not None:
            decisive = decisive_token_mask(
                task, ids[i].tolist(), tools[i].long().tolist(), tokenizer, completion_mask=mask[i].long().tolist()
            )
            record["localization"] = rollout_localization(w.numpy(), e.numpy(), decisive)
        on = mask[i].nonzero()  # (n, 1)
        length = int(on[-1]) + 1 if len(on) else 0
        advantage = None
        if advantages is not None and bool(e.any()):
            a = advantages[i].float().cpu()
            advantage = float(a) if a.dim() == 0 else float(a[e].sum() / w[e].sum())
        reference = None if references is None else references[i]
        record["view"] = {
            "tokens": decode_token_strings(tokenizer, ids[i, :length].tolist()),
            "weights": w[:length].tolist(),
            "eligible": e[:length].tolist(),
            "decisive": [bool(d) for d in decisive[:length]],
            "advantage": advantage,
            "reference": str(getattr(reference, "text", reference) or ""),
        }
        records.append(record)
    return records


def recording_trainer_class():
    """`SGCDTrainer` that appends, per generation batch, the `rollout_records` of its scored rows to `credit_log`."""
    from trl_sgcd.trainer import SGCDTrainer

    class RecordingSGCDTrainer(SGCDTrainer):
        def _progress(self, text: str) -> None:
            """A progress line (shown with the bars): generation and scoring take minutes per step on CPU."""
            if not self.args.disable_tqdm and self.accelerator.is_main_process:
                from tqdm.auto import tqdm

                tqdm.write(f"[demo] step {self.state.global_step + 1}: {text}")

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # (N, F)
            if self.model.training:  # one line per generated round (dynamic sampling may draw several per step)
                from trl_sgcd.demo.summary import plural

                weights = self.reward_weights.to(rewards.device)  # (F,)
                total = (rewards * weights.unsqueeze(0)).nansum(dim=1)  # (N,)
                successes = int((total >= self.args.credit_success_threshold).sum())
                groups = plural(len(total) // self.num_generations, "group")
                self._progress(f"generated and scored {len(total)} rollouts ({groups}), {successes} succeeded")
            return rewards

        def _generate_and_score_completions(self, inputs):
            if self.model.training:
                self._progress(f"generating {len(inputs)} rollouts (multi-turn, tools)")
            self.last_credit = None
            output = super()._generate_and_score_completions(inputs)
            last = self.last_credit
            if not hasattr(self, "credit_log"):
                self.credit_log = []
            if last is not None and self.model.training and last.rows and last.eligible is not None:
                tokenizer = getattr(self, "_tokenizer", self.processing_class)
                ids, keep = output["prompt_ids"].cpu(), output["prompt_mask"].bool().cpu()
                prompts = [tokenizer.decode(ids[i][keep[i]]) if i in last.rows else "" for i in range(len(ids))]
                records = rollout_records(
                    prompts=prompts,
                    completion_ids=output["completion_ids"],
                    completion_mask=output["completion_mask"],
                    tool_mask=output.get("tool_mask"),
                    weights=last.weights,
                    rows=list(last.rows),
                    eligible=last.eligible,
                    tokenizer=tokenizer,
                    step=self.state.global_step + 1,
                    seed=int(inputs[0].get("seed", 0)) if inputs else 0,
                    advantages=output["advantages"],
                    references=list(last.references),
                )
                self.credit_log.append({"step": self.state.global_step + 1, "rows": records})
            return output

    return RecordingSGCDTrainer


def lift_summary(credit_log: list[dict]) -> dict | None:
    """`trl_sgcd.credit.report.localization.summarize` over the run's scored airline rollouts, or `None` without any."""
    from trl_sgcd.credit.report.localization import summarize

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
