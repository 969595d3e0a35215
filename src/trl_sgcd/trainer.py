"""`SGCDTrainer`: GRPO whose scalar advantage is redistributed over tokens by bounded, detached credit weights.

What it changes in `GRPOTrainer`, and nothing else: after `super()._generate_and_score_completions` has generated,
rewarded and normalised a batch, the advantages `(B,)` are replaced by `(B, T)` = A * W, where W = clip(1 + gamma*s,
1, c) comes from the dense teacher/student divergence of the current policy scored with and without a credit
reference (SGCD, arXiv 2606.12634). TRL's own clipped surrogate consumes them unchanged, so policy gradient stays the
only actor update (only the `direct_sd` ablation adds a second gradient path, on purpose).

Stages (each in its own module, all pure): `siblings` (groups, success, mixed) -> `reference` (evidence, sanitizer,
contrast or LLM) -> `teacher` (id splicing) -> `divergence` (dense scoring) -> `saliency` -> `weights`.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
import time
import warnings

import torch
from accelerate.utils import gather_object
from datasets import IterableDataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from trl_sgcd.cli.utils import builtin_model_dir
from trl_sgcd.config import SGCDConfig
from trl_sgcd.credit.llm_result import merge_step_metrics
from trl_sgcd.credit.reference import CreditReference, SiblingReferenceBuilder
from trl_sgcd.credit.saliency import credit_saliency
from trl_sgcd.credit.sampling import merge_batches, merge_outputs, resample_sampler, select_groups
from trl_sgcd.credit.sanitize import private_values
from trl_sgcd.credit.scorer import DenseDivergenceScorer
from trl_sgcd.credit.siblings import build_sibling_groups, owner_of_group
from trl_sgcd.credit.stats import (
    SIBLING_CONTEXT_MODES,
    CreditStats,
    credit_metrics,
    direct_sd_targets,
    group_needs_teacher,
    local_credit_stats,
    masked_row_mean,
    peak_memory_gb,
    refuse_unsupported,
    total_rewards,
    validity_problems,
)
from trl_sgcd.credit.table import CreditTableRecorder
from trl_sgcd.credit.teacher import (
    cap_reference,
    literal_token_mask,
    sibling_context_reference,
    splice_teacher_inputs,
    teacher_prompt_ids,
    unpad_left,
)
from trl_sgcd.credit.weights import apply_credit_weights, credit_weights, uniform_credit_weights
from trl_sgcd.modelcard import ModelCardCallback, write_model_card
from trl_sgcd.tooluse.audit import tool_use_audit

logger = logging.getLogger(__name__)

SGCD_STATE_FILE = "sgcd_state.json"


class SGCDTrainer(GRPOTrainer):
    """Sibling-Guided Credit Distillation on top of [`~trl.GRPOTrainer`].

    Takes exactly `GRPOTrainer`'s arguments (tools, `environment_factory`, `rollout_func`, PEFT, vLLM, DeepSpeed all
    pass straight through); `args` must be an [`SGCDConfig`]. With `credit_mode="off"` it is GRPO, bit for bit.

    Example:

    ```python
    >>> from trl_sgcd import SGCDConfig, SGCDTrainer
    >>> from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset

    >>> trainer = SGCDTrainer(
    ...     model="Qwen/Qwen3-4B-Instruct-2507",
    ...     reward_funcs=airline_reward,
    ...     args=SGCDConfig(output_dir="sgcd-airline"),
    ...     train_dataset=make_airline_dataset("train"),
    ...     environment_factory=AirlineEnv,
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "sgcd", "grpo", "tool-use"]
    _name = "SGCD"
    _paper = {
        "title": "Keep Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use Agents",
        "id": "2606.12634",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{sgcd2026,
                title        = {{Keep Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use Agents}},
                year         = 2026,
                eprint       = {arXiv:2606.12634},
            }"""),
    }

    def __init__(self, model, reward_funcs=None, args: SGCDConfig | None = None, *more, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = SGCDConfig(f"{str(name).split('/')[-1]}-SGCD")
        if not isinstance(args, SGCDConfig):
            raise TypeError(
                f"SGCDTrainer needs an SGCDConfig, got {type(args).__name__}. Replace GRPOConfig(...) with "
                "SGCDConfig(...): it takes the same fields plus the credit_* ones."
            )
        refuse_unsupported(args)
        self.base_model_name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", None)
        model = builtin_model_dir(model) if isinstance(model, str) else model  # "builtin:tiny" works as in the CLI
        super().__init__(model, reward_funcs, args, *more, **kwargs)
        self.add_callback(ModelCardCallback(self))  # README.md at the end of every run, not only at checkpoints
        if args.credit_mode != "off" and self._is_vlm:
            raise ValueError(
                "SGCDTrainer does not score vision-language inputs yet: the dense teacher/student scoring passes no "
                "images, so its divergence would be wrong. Use a text model, or credit_mode='off' (plain GRPO)."
            )
        self.credit_scorer = DenseDivergenceScorer.from_config(args)
        self.reference_builder = SiblingReferenceBuilder.from_config(args, tokenizer=self._tokenizer)
        self._credit_batch: dict | None = None
        self._credit_inert_steps = 0
        # W&B table of each batch's references and per-token weights (first groups only), when reporting to W&B.
        self.credit_table = (
            CreditTableRecorder(self._tokenizer, cap=args.credit_cap, num_generations=self.num_generations)
            if args.credit_mode != "off" and args.credit_log_table and "wandb" in (args.report_to or [])
            else None
        )

    # ------------------------------------------------------------------ hooks into GRPOTrainer (via super())

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # The tool-use audit of the paper (zero-tool collapse), logged in every mode so GRPO arms have it too.
        all_completions = gather_object(list(completions))
        categories = gather_object([row.get("category") for row in inputs])
        audit = tool_use_audit(
            all_completions,
            total_rewards(rewards_per_func, self.reward_weights).tolist(),
            categories if all(c is not None for c in categories) else None,
            success_threshold=self.args.credit_success_threshold,
        )
        mode = "train" if self.model.training else "eval"
        for name, value in audit.items():
            if not name.startswith("num_"):
                self._metrics[mode][f"sgcd/audit/{name}"].append(value)
        if self.args.credit_mode != "off":  # keep what the credit stages need; TRL's output does not carry it
            self._credit_batch = {
                "inputs": inputs,
                "prompts": prompts,
                "completions": completions,
                "all_completions": all_completions,
                "rewards_per_func": rewards_per_func,
            }
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        batch, self._credit_batch = self._credit_batch, None
        if self.args.credit_mode == "off" or batch is None or not self.model.training:
            return output
        rounds = 0
        if self.args.credit_dynamic_sampling:
            output, batch, rounds = self._resample(output, batch)
        return self._apply_credit(output, batch, resample_rounds=rounds)

    # ------------------------------------------------------------------ dynamic sampling

    def _resample(self, output: dict, batch: dict):
        """Generate extra rounds while too few groups are mixed; keep mixed groups first (same batch size)."""
        args, G = self.args, self.num_generations
        n_local = len(batch["prompts"])
        if n_local % G or isinstance(self.train_dataset, IterableDataset):
            if not getattr(self, "_credit_resample_warned", False):
                warnings.warn(
                    "credit_dynamic_sampling is off for this run: it needs a map-style dataset and whole "
                    f"groups on each rank (local generation batch {n_local} is not a multiple of "
                    f"num_generations={G}).",
                    stacklevel=2,
                )
                self._credit_resample_warned = True
            return output, batch, 0
        local = slice(self.accelerator.process_index * n_local, (self.accelerator.process_index + 1) * n_local)
        outputs, batches, local_rewards, mixed = [], [], [], []

        def add(out, b):
            rewards_per_func = b["rewards_per_func"][local]  # (n_local, F)
            success = total_rewards(rewards_per_func, self.reward_weights) >= args.credit_success_threshold
            counts = success.view(-1, G).sum(dim=1).tolist()
            outputs.append(out), batches.append(b), local_rewards.append(rewards_per_func)
            mixed.append([group_needs_teacher(args.credit_mode, int(c), G) for c in counts])

        add(output, batch)
        rounds = 0
        while True:
            chosen = select_groups(mixed, n_local // G)
            n_mixed = torch.tensor([float(sum(mixed[r][g] for r, g in chosen))], device=self.accelerator.device)
            fraction = self.accelerator.gather(n_mixed).sum().item() / (n_local // G * self.accelerator.num_processes)
            if fraction >= args.credit_min_mixed_fraction or rounds >= args.credit_max_resample_rounds:
                break
            extra = super()._generate_and_score_completions(self._next_resample_batch())
            add(extra, self._credit_batch)
            self._credit_batch = None
            rounds += 1
        if rounds == 0:
            return output, batch, 0
        rows = [[] for _ in outputs]
        for r, g in chosen:
            rows[r].extend(range(g * G, (g + 1) * G))
        merged = merge_outputs(outputs, rows, pad_token_id=self._tokenizer.pad_token_id)
        merged_batch = merge_batches(batches, rows, local_rewards)
        merged_batch["rewards_per_func"] = self.accelerator.gather(merged_batch.pop("local_rewards_per_func"))
        merged_batch["all_completions"] = gather_object(list(merged_batch["completions"]))
        mask = merged["completion_mask"] * merged["tool_mask"] if "tool_mask" in merged else merged["completion_mask"]
        merged["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        return merged, merged_batch, rounds

    def _next_resample_batch(self):
        """A fresh generation batch from a sampler of its own (another seed), so the main data order is untouched."""
        if getattr(self, "_credit_resample_iter", None) is None:
            epoch = getattr(self, "_credit_resample_epoch", 0)
            self._credit_resample_epoch = epoch + 1
            sampler = resample_sampler(
                num_generations=self.num_generations,
                generation_batch_size=self.args.generation_batch_size,
                seed=self.args.seed + 7919 * (epoch + 1),
            )
            loader = self._get_dataloader(
                dataset=self.train_dataset,
                description="SGCD resampling",
                batch_size=self._train_batch_size * self.args.steps_per_generation,
                sampler_fn=sampler,
                is_training=True,
            )
            self._credit_resample_iter = iter(loader)
        try:
            return next(self._credit_resample_iter)
        except StopIteration:
            self._credit_resample_iter = None
            return self._next_resample_batch()

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        if self.args.credit_mode != "direct_sd" or "credit_teacher_topk_ids" not in inputs:
            return loss
        # The paper's failing ablation: a second, uncapped actor-gradient path that pulls the student towards the
        # reference-conditioned teacher. Every rank runs this forward, with or without targets (ZeRO-3 safety).
        from trl_sgcd.credit.scorer import teacher_matching_loss

        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        aux = teacher_matching_loss(
            model,
            input_ids,
            attention_mask,
            inputs["credit_sd_mask"],
            inputs["credit_teacher_topk_ids"],
            inputs["credit_teacher_topk_logprobs"],
            temperature=self.temperature,
            chunk_size=self.args.credit_chunk_size,
        )
        self._metrics["train"]["sgcd/direct_sd_loss"].append(self.accelerator.gather(aux.detach()).mean().item())
        return loss + self.args.credit_direct_sd_coef * aux / self.current_gradient_accumulation_steps

    # ------------------------------------------------------------------ checkpoints (resume keeps the credit state)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        """The SGCD card (`trl_sgcd.modelcard`): the real base model, the credit settings, the final `sgcd/` metrics."""
        write_model_card(self, model_name=model_name, dataset_name=dataset_name)

    def _issue_warnings_after_load(self, load_result):
        # Tied weights (`lm_head.weight` of a tied-embedding model) are not saved, so a resume reports them missing
        # although they share the loaded embedding: harmless, so not warned about.
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or ())
        load_result.missing_keys[:] = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(load_result)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            with open(os.path.join(folder, SGCD_STATE_FILE), "w") as f:
                json.dump(self._credit_state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, SGCD_STATE_FILE) if checkpoint is not None else None
        if path is not None and os.path.exists(path):
            with open(path) as f:
                self._load_credit_state_dict(json.load(f))

    def _credit_state_dict(self) -> dict:
        return {"reference_builder": self.reference_builder.state_dict(), "inert_steps": self._credit_inert_steps}

    def _load_credit_state_dict(self, state: dict) -> None:
        self.reference_builder.load_state_dict(state.get("reference_builder", {}))
        self._credit_inert_steps = int(state.get("inert_steps", 0))

    # ------------------------------------------------------------------ the credit pipeline

    def _apply_credit(self, output: dict, batch: dict, resample_rounds: int = 0) -> dict:
        args, mode = self.args, self.args.credit_mode
        device = self.accelerator.device
        n_local = len(batch["prompts"])
        offset = self.accelerator.process_index * n_local
        rewards = total_rewards(batch["rewards_per_func"], self.reward_weights)  # (N,)

        # Siblings: a group may span ranks, so gather texts and private values, then cut into groups of G.
        private = [private_values(row, args.credit_private_columns) for row in batch["inputs"]]
        groups = build_sibling_groups(
            gather_object(list(batch["prompts"])),
            batch["all_completions"],
            rewards.tolist(),
            gather_object(private),
            num_generations=self.num_generations,
            success_threshold=args.credit_success_threshold,
        )
        needed = [g for g in groups if group_needs_teacher(mode, g.num_success, len(g.rollouts))]
        num_mixed = sum(g.is_mixed for g in groups)

        # References: each group is summarised exactly once, by its owner rank; every rank receives all of them.
        t0 = time.perf_counter()
        owned = [
            g
            for g in needed
            if owner_of_group(g.group_index, self.accelerator.num_processes) == self.accelerator.process_index
        ]
        if mode in SIBLING_CONTEXT_MODES:
            built = [
                sibling_context_reference(
                    g,
                    private_columns=args.credit_private_columns,
                    observation_max_chars=args.credit_observation_max_chars,
                )
                for g in owned
            ]
        else:
            built = self.reference_builder.build(owned)  # every rank builds (maybe nothing): its step metrics reset
            for name, value in merge_step_metrics(gather_object([self.reference_builder.step_metrics()])).items():
                self._metrics["train"][name].append(value)
        references = {ref.group_index: ref for ref in gather_object(built)}
        reference_latency = time.perf_counter() - t0

        # Rows of this rank that get a teacher.
        G = self.num_generations
        local_refs = [references.get((offset + i) // G) for i in range(n_local)]
        rows = [i for i, ref in enumerate(local_refs) if ref is not None and ref.source != "none" and ref.text]
        scores, eligible_rows, literal_rows, fallback_prefix, elapsed = self._score_rows(
            output, batch, local_refs, rows
        )

        advantages = output["advantages"]  # (B,)
        T = output["completion_ids"].size(1)
        weights = torch.ones(n_local, T, device=device)  # (B, T)
        stats = CreditStats(dict.fromkeys(CreditStats.SUM_KEYS, 0.0), dict.fromkeys(CreditStats.MAX_KEYS, 0.0))
        if rows:
            eligible = eligible_rows  # (R, T)
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
            w = credit_weights(saliency, gamma=args.credit_gamma, cap=args.credit_cap, eligible_mask=eligible)
            if mode == "uniform":
                w = uniform_credit_weights(w, eligible)
            if mode in ("sgcd", "no_reference", "uniform"):
                weights[rows] = w.to(device)
            tool_mask = output.get("tool_mask")
            stats = local_credit_stats(
                divergence=scores.divergence,
                entropy=scores.teacher_entropy,
                saliency=saliency,
                weights=w,
                eligible=eligible,
                tool_mask=tool_mask[rows] if tool_mask is not None else None,
                cap=args.credit_cap,
                scoring_time_s=elapsed,
                peak_memory_gb=peak_memory_gb(),
            )
        stats.maxima["scoring_time_s"] = elapsed

        if mode == "sdpo":  # comparator: the reward is replaced by the teacher/student log-ratio on sampled tokens
            new_adv = torch.zeros(n_local, T, device=device)
            if rows:
                ratio = (scores.teacher_logprobs - scores.student_logprobs) * eligible_rows  # (R, T)
                new_adv[rows] = ratio.to(device)
            output["advantages"] = new_adv
        else:
            output["advantages"] = apply_credit_weights(advantages, weights)  # (B, T)
        if mode == "direct_sd":
            output.update(
                direct_sd_targets(
                    output["completion_ids"].shape, self.args.credit_top_k, rows, scores, eligible_rows, device=device
                )
            )

        self._log_credit(
            output,
            batch,
            groups,
            references,
            num_mixed,
            stats,
            reference_latency,
            fallback_prefix,
            weights,
            local_refs,
            resample_rounds,
        )
        if self.credit_table is not None and self.accelerator.is_main_process:
            self.credit_table.record(  # step: the optimizer step that first trains on this batch
                step=self.state.global_step + 1,
                prompts=batch["prompts"],
                completion_ids=output["completion_ids"],
                completion_mask=output["completion_mask"],
                tool_mask=output.get("tool_mask"),
                weights=weights,
                rewards=rewards[offset : offset + n_local],
                advantages=advantages,
                references=local_refs,
                row_offset=offset,
            )
        self._check_validity(num_mixed, weights)
        return output

    def _score_rows(self, output, batch, local_refs, rows):
        """Build teacher inputs for `rows` by splicing, and score student and teacher (equal forwards on all ranks)."""
        args, tok = self.args, self._tokenizer
        device = self.accelerator.device
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        tool_mask = output.get("tool_mask")
        eligible = completion_mask.bool() if tool_mask is None else completion_mask.bool() & tool_mask.bool()

        teacher_ids, literals, fallback_prefix = [], [], 0
        if rows:
            texts = {i: cap_reference(local_refs[i].text, tok, args.credit_reference_max_tokens) for i in rows}
            # TRL's own renderer (same template, tools, kwargs as the student's prompt); completions are spliced later.
            teacher_ids, fallback_prefix = teacher_prompt_ids(
                batch["prompts"],
                texts,
                unpad_left(prompt_ids[rows], prompt_mask[rows]),
                render=lambda prompts: self._tokenize_prompts(prompts)[0],
                tokenizer=tok,
            )
            literals = [list(local_refs[i].masked_literals) for i in rows]

        n_batches = torch.tensor([self.credit_scorer.num_batches(len(rows))], device=device)
        min_batches = int(self.accelerator.gather(n_batches).max())
        if min_batches == 0:
            return None, None, None, 0, 0.0

        c_ids, c_mask = completion_ids[rows], completion_mask[rows]  # (R, T)
        s_ids = torch.cat([prompt_ids[rows], c_ids], dim=1)
        s_mask = torch.cat([prompt_mask[rows], c_mask], dim=1)
        t_ids, t_mask = splice_teacher_inputs(teacher_ids, c_ids, c_mask, pad_token_id=tok.pad_token_id)
        t0 = time.perf_counter()
        # The scorer calls the backbone directly, past accelerate's autocast wrapper of `model.forward`: under bf16/fp16
        # mixed precision it must score in the precision the policy's own log-probs are computed in.
        with self.accelerator.autocast():
            scores = self.credit_scorer.score(
                self.model,
                s_ids,
                s_mask,
                t_ids,
                t_mask,
                c_ids,
                c_mask,
                min_batches=min_batches,
                return_teacher_topk=args.credit_mode == "direct_sd",
            )
        elapsed = time.perf_counter() - t0
        eligible_rows = eligible[rows]
        if rows:
            # Literals the student sees (in its prompt, in an earlier tool observation) stay eligible.
            eligible_rows = eligible_rows & ~literal_token_mask(
                c_ids,
                literals,
                tok,
                prompt_ids=unpad_left(prompt_ids[rows], prompt_mask[rows]),
                tool_mask=None if tool_mask is None else tool_mask[rows],
            )
        return scores, eligible_rows, literals, fallback_prefix, elapsed

    # ------------------------------------------------------------------ logging and validity

    def _log_credit(
        self,
        output,
        batch,
        groups,
        references,
        num_mixed,
        stats,
        latency,
        fallback_prefix,
        weights,
        local_refs,
        resample_rounds=0,
    ):
        device = self.accelerator.device
        sums, maxima = stats.vectors(device)
        sums = self.accelerator.gather(sums.unsqueeze(0)).sum(dim=0)
        maxima = self.accelerator.gather(maxima.unsqueeze(0)).max(dim=0).values
        extra = self.accelerator.gather(torch.tensor([[float(fallback_prefix)]], device=device)).sum().item()
        self._last_credit_stats = CreditStats.from_vectors(sums, maxima)
        sources: dict[str, int] = {}
        costs = [r.cost_usd for r in references.values()]
        for ref in references.values():
            sources[ref.source] = sources.get(ref.source, 0) + 1
        metrics = credit_metrics(
            self._last_credit_stats,
            num_groups=len(groups),
            num_mixed=num_mixed,
            sources=sources,
            latency_s=latency,
            cost_usd=sum(costs) if costs and all(c is not None for c in costs) else None,
            resample_rounds=resample_rounds,
            fallback_prefix=int(extra),
        )
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)

        # The completions table shows the reweighted advantages: per rollout, the mean of A*W over its loss tokens.
        adv = output["advantages"]
        if adv.dim() == 2:
            mask = (
                output["completion_mask"]
                if "tool_mask" not in output
                else output["completion_mask"] * output["tool_mask"]
            )
            shown = self.accelerator.gather(masked_row_mean(adv, mask)).tolist()
            logged = self._logs["advantages"]
            for k, value in enumerate(shown):
                logged[len(logged) - len(shown) + k] = value
        self._credit_last_batch = {"references": local_refs, "weights": weights.detach().cpu()}

    def _check_validity(self, num_mixed: int, weights: torch.Tensor):
        problems, self._credit_inert_steps = validity_problems(
            self._last_credit_stats,
            mode=self.args.credit_mode,
            num_mixed=num_mixed,
            weights_require_grad=weights.requires_grad,
            inert_steps=self._credit_inert_steps,
            inert_limit=self.args.credit_inert_steps,
        )
        for problem in problems:
            message = f"SGCD validity check: {problem}."
            if self.args.credit_strict:
                raise RuntimeError(message + " (credit_strict=True)")
            warnings.warn(message, stacklevel=2)


__all__ = ["SGCDTrainer", "CreditReference"]
