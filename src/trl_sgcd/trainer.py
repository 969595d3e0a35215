"""`SGCDTrainer`: GRPO whose scalar advantage is redistributed over tokens by bounded, detached credit weights.

After GRPO has generated, rewarded and normalised a batch, its advantages `(B,)` become `(B, T)` = A * W (SGCD, arXiv
2606.12634); TRL's own clipped surrogate consumes them. Overridden in `GRPOTrainer`, each through `super()`:

* `_calculate_rewards`: the tool-use audit (zero-tool collapse; every mode, so GRPO arms have it too); keeps the
  texts and rewards that dynamic sampling and the credit stages need;
* `_generate_and_score_completions`: dynamic sampling (every mode alike, `sampling.py`), then one call of
  `CreditPipeline.run` (`credit/pipeline.py`: the stages in order, rank logic through `credit/comm.py`) in the modes
  that score (`credit/modes.py` says what each mode does);
* `_compute_loss`: the mode's extra loss (`direct_sd`, `sdpo`); `_get_per_token_logps_and_entropies`: `lm_head.py`;
* `_generate`: a rollout whose environment is `done` gets no further turn (`envs/episode.py`); with `scripted_sibling`,
  the last rollout of each group is the script's (`envs/scripted.py`); `_get_tool_suffix_ids`: ends those rollouts;
* `_save_checkpoint` / `_load_optimizer_and_scheduler`: `sgcd_state.json` (`credit/state.py`: the pipeline's state
  and dynamic sampling's stream position), a resume is exact;
* `create_model_card`, `_issue_warnings_after_load`: the SGCD model card; no warning for tied weights on resume.
Only TRL hooks live here; the credit's order, state and cross-rank logic are the pipeline's.
"""

from __future__ import annotations

import os
import textwrap
import warnings
from contextlib import contextmanager

import torch
from accelerate.utils import gather_object
from datasets import IterableDataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl import GRPOTrainer

from trl_sgcd import sampling
from trl_sgcd.config import SGCDConfig, refuse_unsupported
from trl_sgcd.credit.comm import AcceleratorComm
from trl_sgcd.credit.modes import credit_mode
from trl_sgcd.credit.pipeline import CreditBatch, CreditPipeline
from trl_sgcd.credit.state import SGCD_STATE_FILE, load_sgcd_state, save_sgcd_state
from trl_sgcd.credit.stats import masked_row_mean, total_rewards
from trl_sgcd.credit.types import CreditResult
from trl_sgcd.credit.weighting.weights import loss_mask
from trl_sgcd.envs.episode import end_episode_suffix, watch_episode_ends
from trl_sgcd.envs.scripted import apply_scripted_sibling
from trl_sgcd.lm_head import compact_lm_head
from trl_sgcd.modelcard import ModelCardCallback, write_model_card
from trl_sgcd.tooluse.audit import tool_use_audit
from trl_sgcd.tooluse.models import builtin_model_dir, check_model_name
from trl_sgcd.vllm_cpu import cpu_colocate_generation

logger = logging.get_logger(__name__)


@contextmanager
def quiet_trl_deprecations():
    """
    Silence, inside the block only, transformers' deprecation warnings for calls that TRL 1.16 makes, not trl-sgcd nor
    the user: transformers 5.24 renamed `is_gradient_checkpointing` and `gradient_checkpointing_enable` / `_disable` to
    `*activation_checkpointing*`, and TRL still uses the old names around every generation (trl.models.utils).
    """
    with warnings.catch_warnings():
        for name in ("is_gradient_checkpointing", "gradient_checkpointing_enable", "gradient_checkpointing_disable"):
            warnings.filterwarnings("ignore", message=f"`{name}` is deprecated", category=FutureWarning)
        yield


def _replace_last(logged, values: list) -> None:
    """Overwrite the last `len(values)` entries of a list or deque (TRL's completions-table logs) with `values`."""
    for k, value in enumerate(values, start=len(logged) - len(values)):
        logged[k] = value


class SGCDTrainer(GRPOTrainer):
    """Sibling-Guided Credit Distillation on top of [`~trl.GRPOTrainer`].

    Takes exactly `GRPOTrainer`'s arguments (tools, `environment_factory`, `rollout_func`, PEFT, vLLM, DeepSpeed all
    pass straight through); `args` must be an [`SGCDConfig`]. `credit_mode="off"` without dynamic sampling is GRPO,
    bit for bit; `trainer.last_credit` is the last generation batch's [`CreditResult`]. Its own argument:
    `scripted_sibling=script` (`script(env) -> messages`) replaces each training group's last rollout by the script's
    episode: an off-policy expert sibling (`trl_sgcd.envs.scripted`: what it changes; `tau2.scripted`, for τ²).

    Example:

    ```python
    >>> from trl_sgcd import SGCDConfig, SGCDTrainer
    >>> from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset

    >>> trainer = SGCDTrainer("Qwen/Qwen3-4B-Instruct-2507", airline_reward, SGCDConfig(output_dir="sgcd-airline"),
    ...                       train_dataset=make_airline_dataset("train"), environment_factory=AirlineEnv)
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

    def __init__(self, model, reward_funcs=None, args=None, *more, scripted_sibling=None, **kwargs):
        if isinstance(model, str):  # a mistyped path fails here, in a line, not after Hub retries
            model = check_model_name(model)
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
        with cpu_colocate_generation(args):  # vLLM's CPU backend needs its own weight sync (see trl_sgcd.vllm_cpu)
            super().__init__(model, reward_funcs, args, *more, **kwargs)
        self.add_callback(ModelCardCallback(self))  # README.md at the end of every run, not only at checkpoints
        self.credit_mode = credit_mode(args.credit_mode)
        refuse_unsupported(args, is_vlm=self._is_vlm)
        pipe = self.credit_pipeline = CreditPipeline(args, self._tokenizer, num_generations=self.num_generations)
        self.credit_scorer, self.reference_builder = pipe.scorer, pipe.reference_builder
        self.last_credit: CreditResult | None = None  # the last generation batch's credit, stats reduced over ranks
        self._credit_batch, self._credit_comm = None, AcceleratorComm(self.accelerator)
        self.scripted_sibling = scripted_sibling
        self._credit_stream = sampling.ResampleStream(self._resample_loader)  # dynamic sampling's extra rounds

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        all_completions = gather_object(list(completions))
        categories = gather_object([row.get("category") for row in inputs])
        categories = categories if all(c is not None for c in categories) else None
        rewards = total_rewards(rewards_per_func, self.reward_weights).tolist()
        audit = tool_use_audit(
            all_completions, rewards, categories, success_threshold=self.args.credit_success_threshold
        )
        self._log({f"sgcd/audit/{k}": v for k, v in audit.items() if not k.startswith("num_")})
        self._credit_batch = dict(inputs=inputs, prompts=prompts, completions=completions)  # TRL's output lacks these
        self._credit_batch.update(all_completions=all_completions, rewards_per_func=rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        with quiet_trl_deprecations():  # TRL's own deprecated calls around generation, not the user's
            output = super()._generate_and_score_completions(inputs)
            batch, self._credit_batch = self._credit_batch, None
            if batch is None or not self.model.training:
                return output
            if self.args.credit_dynamic_sampling:
                output, batch = self._resample(output, batch)
            return self._apply_credit(output, batch) if self.credit_mode.scores else output

    def _generate(self, prompts):
        # Tool results returned once an environment is `done` end that rollout's loop (TRL builds these dicts just now).
        tool_dicts = (getattr(self, "_sync_tool_dicts", None), getattr(self, "_async_tool_dicts", None))
        watch_episode_ends(self.environments if self.tools else None, tool_dicts)
        output = super()._generate(prompts)
        if self.scripted_sibling is None or not self.model.training:
            return output
        by_env = self.environment_factories is not None
        output, n = apply_scripted_sibling(
            output,
            prompts,
            script=self.scripted_sibling,
            environments=self.environments,
            tools=[self._env_tools[name] for name in self._batch_environments] if by_env else self.tools,
            tokenizer=self._tokenizer,
            num_generations=self.num_generations,
            process_index=self.accelerator.process_index,
            template_kwargs={"chat_template": self.chat_template, **(self.chat_template_kwargs or {})},
        )
        self._metrics["train"]["sgcd/scripted_siblings"].append(float(n))
        return output

    def _get_tool_suffix_ids(self, tool_messages):
        suffix = super()._get_tool_suffix_ids(tool_messages)
        pad, budget = self._tokenizer.pad_token_id, self.max_completion_length
        return end_episode_suffix(tool_messages, suffix, pad_token_id=pad, max_completion_length=budget)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        with compact_lm_head(self.args.credit_compact_lm_head):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        # Every rank runs the extra forward, with or without targets (ZeRO-3 safety): the targets are always there.
        if (extra := self.credit_pipeline.extra_loss(model, inputs, temperature=self.temperature)) is None:
            return loss
        aux, name, coef = extra
        self._metrics["train"][name].append(self.accelerator.gather(aux.detach()).mean().item())
        return loss + coef * aux / self.current_gradient_accumulation_steps

    def _resample(self, output: dict, batch: dict):
        """Extra generation rounds while too few groups are mixed (the rule and its logs: `sampling.py`)."""
        args, G, acc, n_local = self.args, self.num_generations, self.accelerator, len(batch["prompts"])
        if why_not := sampling.unavailable(n_local, G, iterable=isinstance(self.train_dataset, IterableDataset)):
            logger.warning_once(why_not)
            return output, batch

        def next_round():
            out = super(SGCDTrainer, self)._generate_and_score_completions(self._credit_stream.next())
            new, self._credit_batch = self._credit_batch, None
            return out, new

        global_sum = lambda n: int(acc.gather(torch.tensor([float(n)], device=acc.device)).sum().item())  # noqa: E731
        local = slice(acc.process_index * n_local, (acc.process_index + 1) * n_local)
        outputs, batches, rewards, chosen, metrics = sampling.draw_rounds(
            output,
            batch,
            local,
            next_round,
            global_sum,
            args=args,
            reward_weights=self.reward_weights,
            group_size=G,
            announce=logger.warning if acc.is_main_process else None,
        )
        self._log(metrics)
        if len(outputs) == 1:  # no extra round
            return output, batch
        merged, merged_batch = sampling.merge_rounds(
            outputs, batches, rewards, chosen, group_size=G, pad_token_id=self._tokenizer.pad_token_id
        )
        merged_batch["rewards_per_func"] = acc.gather(merged_batch.pop("local_rewards_per_func"))
        merged_batch["all_completions"] = gather_object(list(merged_batch["completions"]))
        tokens = loss_mask(merged["completion_mask"], merged.get("tool_mask")).sum()
        merged["num_items_in_batch"] = acc.gather(tokens).sum()
        return merged, merged_batch

    def _resample_loader(self, epoch: int):
        sampler = sampling.resample_sampler(self.args, num_generations=self.num_generations, epoch=epoch)
        batch_size = self._train_batch_size * self.args.steps_per_generation
        return self._get_dataloader(self.train_dataset, "SGCD resampling", batch_size, sampler, is_training=True)

    def _apply_credit(self, output: dict, batch: dict) -> dict:
        """The credit pipeline on this batch (its order and cross-rank logic: `CreditPipeline.run`)."""
        credit = CreditBatch(
            output,
            prompts=batch["prompts"],
            rows=batch["inputs"],
            all_completions=batch["all_completions"],
            rewards=total_rewards(batch["rewards_per_func"], self.reward_weights),
            model=self.model,
            render=lambda prompts: self._tokenize_prompts(prompts)[0],
            autocast=self.accelerator.autocast,  # the scorer calls the backbone past accelerate's autocast wrapper
            step=self.state.global_step + 1,  # the optimizer step that first trains on this batch
            has_tools=bool(self.tools),
        )
        self.last_credit = result = self.credit_pipeline.run(credit, self._credit_comm)
        output["advantages"] = result.advantages
        output.update(result.extra_loss_inputs)
        self._log(result.metrics)
        # The completions table shows the reweighted advantages: per rollout, the mean of A*W over its loss tokens.
        shown = masked_row_mean(output["advantages"], loss_mask(output["completion_mask"], output.get("tool_mask")))
        _replace_last(self._logs["advantages"], self.accelerator.gather(shown).tolist())  # it ends with GRPO's ones
        return output

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        """The SGCD card (`trl_sgcd.modelcard`): the real base model, the credit settings, the final `sgcd/` metrics."""
        write_model_card(self, model_name=model_name, dataset_name=dataset_name)

    def _issue_warnings_after_load(self, load_result):
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or ())  # not saved: a resume's harmless miss
        load_result.missing_keys[:] = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(load_result)

    def _log(self, metrics: dict) -> None:  # into TRL's own buffers: averaged and logged with TRL's at the next `log`
        for name, value in metrics.items():
            self._metrics["train" if self.model.training else "eval"][name].append(value)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            state = {**self.credit_pipeline.state_dict(), "resample": self._credit_stream.state_dict()}
            save_sgcd_state(folder, state)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if (state := load_sgcd_state(checkpoint)) is not None:
            self.credit_pipeline.load_state_dict(state)
            self._credit_stream.load_state_dict(state.get("resample", {}))


__all__ = ["SGCDTrainer", "SGCD_STATE_FILE", "quiet_trl_deprecations"]
