"""`SGCDConfig`: GRPOConfig plus the `credit_*` fields of Sibling-Guided Credit Distillation."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from trl_sgcd.credit.modes import MODES

CREDIT_MODES = tuple(MODES)
SDPO_DISTILLATION_MODES = ("topk_logits", "sampled_token")
DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
REFERENCE_BACKENDS = ("contrast", "litellm")
REFERENCE_FALLBACKS = ("contrast", "none")


@dataclass
class SGCDConfig(GRPOConfig):
    r"""
    Configuration class for [`SGCDTrainer`]: everything of [`~trl.GRPOConfig`] plus the credit settings of SGCD
    ("Keep Policy Gradient in Charge", arXiv 2606.12634). Every new field starts with `credit_`, so none shadows a
    GRPO field (`GRPOConfig` already owns `top_k`, `beta` and `temperature`).

    Parameters:
        > Parameters that select the method

        credit_mode (`str`, *optional*, defaults to `"sgcd"`):
            `"sgcd"`: the full method. `"off"`: no reference, no scoring, W = 1 (exactly GRPO). `"no_reference"`: the
            teacher context is a raw successful sibling instead of a credit reference. `"uniform"`: each rollout's W is
            replaced by its mean over eligible tokens (same credit mass, no localisation). `"direct_sd"`: GRPO plus an
            uncapped teacher-matching KL with gradient (the paper's failing ablation). `"sdpo"`: the SDPO comparator
            (self-distillation from another successful sibling replaces the reward; see the `credit_sdpo_*` fields).
        credit_gamma (`float`, *optional*, defaults to `1.0`):
            Gain gamma in W = clip(1 + gamma * s, 1, c). Must be >= 0.
        credit_cap (`float`, *optional*, defaults to `2.0`):
            Cap c of the token weight. Must be > 1.

        > Parameters that control the dense divergence

        credit_divergence (`str`, *optional*, defaults to `"reverse_kl"`):
            `"reverse_kl"` (KL(student || teacher), the paper's default), `"forward_kl"` or `"jsd"`.
        credit_top_k (`int`, *optional*, defaults to `32`):
            Size K of the teacher top-K support (plus the observed token and one tail bucket).
        credit_chunk_size (`int`, *optional*, defaults to `256`):
            Number of completion positions whose vocabulary logits are materialised at once while scoring.
        credit_scoring_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Rollouts per scoring forward; `None` uses `per_device_train_batch_size`.

        > Parameters that control saliency (the segmenter)

        credit_spike_z (`float`, *optional*, defaults to `2.0`):
            A token is a divergence spike when its robust z-score (median / MAD over the rollout's eligible tokens)
            reaches this value.
        credit_saturation_z (`float`, *optional*, defaults to `4.0`):
            z-score at which saliency reaches 1 (s = clip(z / saturation, 0, 1) at the span's peak).
        credit_reset_z (`float`, *optional*, defaults to `-0.5`):
            A span ends when the z-score falls below this value (the divergence resets).
        credit_entropy_rise (`float`, *optional*, defaults to `0.5`):
            A span ends when the teacher entropy rises more than this many nats above its value at the span start.
        credit_max_span (`int`, *optional*, defaults to `32`):
            Longest span in tokens.
        credit_min_divergence (`float`, *optional*, defaults to `1e-4`):
            Spikes below this divergence (nats) are ignored, so numerical noise never makes credit.

        > Parameters that control sibling evidence and the credit reference

        credit_success_threshold (`float`, *optional*, defaults to `1.0`):
            A rollout succeeds when its total reward is >= this value. A group is mixed when 0 < #success < G.
        credit_reference_backend (`str`, *optional*, defaults to `"contrast"`):
            `"contrast"`: the offline, deterministic contrast builder (no model, no key). `"litellm"`: an external
            LLM through litellm.
        credit_reference_model (`str` or `None`, *optional*, defaults to `None`):
            litellm model name, e.g. `"openai/gpt-4o-mini"` or `"hosted_vllm/Qwen3-32B"`.
        credit_reference_api_base (`str` or `None`, *optional*, defaults to `None`):
            Base URL of an OpenAI-compatible server for the litellm backend.
        credit_reference_api_key_env (`str` or `None`, *optional*, defaults to `None`):
            Name of the environment variable that holds the API key (the key itself never goes in a config file).
        credit_reference_deadline (`float`, *optional*, defaults to `60.0`):
            Hard deadline in seconds for one LLM call, retries excluded; enforced with `asyncio.wait_for`.
        credit_reference_retries (`int`, *optional*, defaults to `3`):
            Retries on rate limits (429), server errors (5xx) and timeouts, with exponential backoff and jitter.
        credit_reference_concurrency (`int`, *optional*, defaults to `8`):
            LLM calls in flight at once.
        credit_reference_max_input_tokens (`int`, *optional*, defaults to `12000`):
            Token budget of the sibling evidence sent to the LLM (the selection rule of the paper's appendix applies).
        credit_reference_max_tokens (`int`, *optional*, defaults to `512`):
            Cap on the reference, both as LLM output and as inserted teacher context. The task prompt is never cut.
        credit_reference_cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Disk cache of references keyed by a hash of the sanitized evidence and the model; `None` disables it.
        credit_reference_fallback (`str`, *optional*, defaults to `"contrast"`):
            What a group gets when the LLM fails: `"contrast"` (the offline reference) or `"none"` (W = 1).
        credit_observation_max_chars (`int`, *optional*, defaults to `512`):
            Tool observations longer than this are truncated in the evidence before any sibling is dropped.
        credit_private_columns (`list[str]`, *optional*, defaults to `[]`):
            Dataset columns whose values (gold answers, gold actions) are masked wherever they appear in evidence.

        > Parameters of the ablations and extras

        credit_direct_sd_coef (`float`, *optional*, defaults to `0.1`):
            Coefficient of the teacher-matching KL in `credit_mode="direct_sd"`.
        credit_dynamic_sampling (`bool`, *optional*, defaults to `False`):
            Dynamic sampling (DAPO's rule), the same in every credit mode (`off` included: the matched GRPO control):
            generate extra rounds while too few groups of a generation batch are mixed, and keep mixed groups first.
        credit_min_mixed_fraction (`float`, *optional*, defaults to `1.0`):
            Stop resampling once this fraction of the batch can be filled with mixed groups (1.0: only mixed groups,
            DAPO's rule). At the round limit the rest is filled with non-mixed groups (logged).
        credit_max_resample_rounds (`int`, *optional*, defaults to `2`):
            Bound on extra generation rounds per batch for dynamic sampling.

        > Parameters of the SDPO comparator (`credit_mode="sdpo"`)

        credit_sdpo_distillation_mode (`str`, *optional*, defaults to `"topk_logits"`):
            `"topk_logits"`: the paper's Table 7 SDPO, a divergence on the teacher's top-K support plus a tail bucket
            as the loss (TRL SDPOTrainer's `distillation_mode="topk_logits"`, `distillation_add_tail=True`).
            `"sampled_token"`: the teacher/student log-ratio of the sampled tokens is the advantage (TRL's default).
        credit_sdpo_top_k (`int`, *optional*, defaults to `100`):
            K of the top-K support in `"topk_logits"` (Table 7: about 100).
        credit_sdpo_alpha (`float`, *optional*, defaults to `0.5`):
            The divergence (TRL's `distillation_alpha`): 0 = KL(teacher || student), 1 = KL(student || teacher),
            0.5 = symmetric JSD (Table 7).
        credit_sdpo_distillation_weight (`float`, *optional*, defaults to `1.0`):
            Weight w of the distillation term; GRPO's surrogate keeps 1 - w of the advantage (1.0: pure SDPO, the
            reward replaced). TRL's `distillation_weight`.
        credit_strict (`bool`, *optional*, defaults to `False`):
            Raise instead of warn when a validity check fails (all-zero features, inert weights, a tool-observation
            token in the credit mask, weights that require grad).
        credit_inert_steps (`int`, *optional*, defaults to `10`):
            Steps with mixed groups but no credit token before the inert-weights check fires.
        credit_log_table (`bool`, *optional*, defaults to `True`):
            Log a per-step W&B table with the reference and each rollout shaded by its weights (when W&B is on).
    """

    credit_mode: str = field(
        default="sgcd",
        metadata={"help": "Credit mode.", "choices": list(CREDIT_MODES)},
    )
    credit_gamma: float = field(default=1.0, metadata={"help": "Gain gamma in W = clip(1 + gamma*s, 1, cap)."})
    credit_cap: float = field(default=2.0, metadata={"help": "Cap c of the token weight (> 1)."})
    credit_divergence: str = field(
        default="reverse_kl",
        metadata={"help": "Dense divergence between student and teacher.", "choices": list(DIVERGENCES)},
    )
    credit_top_k: int = field(default=32, metadata={"help": "Teacher top-K support size."})
    credit_chunk_size: int = field(default=256, metadata={"help": "Completion positions per lm_head chunk."})
    credit_scoring_batch_size: int | None = field(
        default=None, metadata={"help": "Rollouts per scoring forward (default: per_device_train_batch_size)."}
    )
    credit_spike_z: float = field(default=2.0, metadata={"help": "Robust z-score that marks a divergence spike."})
    credit_saturation_z: float = field(default=4.0, metadata={"help": "z-score at which saliency reaches 1."})
    credit_reset_z: float = field(default=-0.5, metadata={"help": "A span ends below this z-score."})
    credit_entropy_rise: float = field(
        default=0.5, metadata={"help": "A span ends when teacher entropy rises this many nats above its start."}
    )
    credit_max_span: int = field(default=32, metadata={"help": "Longest credit span, in tokens."})
    credit_min_divergence: float = field(default=1e-4, metadata={"help": "Smallest divergence (nats) of a spike."})
    credit_success_threshold: float = field(
        default=1.0, metadata={"help": "A rollout succeeds when its total reward is >= this value."}
    )
    credit_reference_backend: str = field(
        default="contrast",
        metadata={"help": "Credit reference backend.", "choices": list(REFERENCE_BACKENDS)},
    )
    credit_reference_model: str | None = field(default=None, metadata={"help": "litellm model name."})
    credit_reference_api_base: str | None = field(
        default=None, metadata={"help": "Base URL of an OpenAI-compatible server."}
    )
    credit_reference_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable holding the API key."}
    )
    credit_reference_deadline: float = field(
        default=60.0, metadata={"help": "Hard per-call deadline in seconds (asyncio.wait_for)."}
    )
    credit_reference_retries: int = field(default=3, metadata={"help": "Retries on 429/5xx/timeouts."})
    credit_reference_concurrency: int = field(default=8, metadata={"help": "LLM calls in flight at once."})
    credit_reference_max_input_tokens: int = field(
        default=12000, metadata={"help": "Token budget of the sibling evidence."}
    )
    credit_reference_max_tokens: int = field(
        default=512, metadata={"help": "Cap on the reference (LLM output and teacher context)."}
    )
    credit_reference_cache_dir: str | None = field(default=None, metadata={"help": "Disk cache of references."})
    credit_reference_fallback: str = field(
        default="contrast",
        metadata={"help": "Fallback when the LLM fails.", "choices": list(REFERENCE_FALLBACKS)},
    )
    credit_observation_max_chars: int = field(
        default=512, metadata={"help": "Truncate tool observations in the evidence to this many characters."}
    )
    credit_private_columns: list[str] = field(
        default_factory=list, metadata={"help": "Dataset columns whose values are masked in the evidence."}
    )
    credit_direct_sd_coef: float = field(
        default=0.1, metadata={"help": "Coefficient of the teacher-matching KL in direct_sd mode."}
    )
    credit_dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "Dynamic sampling (DAPO's rule) in every credit mode: resample while too few groups are mixed."
        },
    )
    credit_min_mixed_fraction: float = field(
        default=1.0,
        metadata={"help": "Stop resampling once this fraction of the batch is mixed groups (1.0: only mixed, DAPO)."},
    )
    credit_max_resample_rounds: int = field(default=2, metadata={"help": "Bound on extra generation rounds."})
    credit_sdpo_distillation_mode: str = field(
        default="topk_logits",
        metadata={"help": "SDPO comparator objective.", "choices": list(SDPO_DISTILLATION_MODES)},
    )
    credit_sdpo_top_k: int = field(default=100, metadata={"help": "Top-K support of the SDPO comparator's loss."})
    credit_sdpo_alpha: float = field(
        default=0.5, metadata={"help": "SDPO divergence: 0 KL(teacher||student), 1 KL(student||teacher), 0.5 JSD."}
    )
    credit_sdpo_distillation_weight: float = field(
        default=1.0, metadata={"help": "Weight of SDPO's distillation term (1.0: pure SDPO, reward replaced)."}
    )
    credit_strict: bool = field(default=False, metadata={"help": "Raise instead of warn on validity checks."})
    credit_inert_steps: int = field(default=10, metadata={"help": "Steps before the inert-weights check fires."})
    credit_log_table: bool = field(default=True, metadata={"help": "Log a per-step W&B credit table."})

    def __post_init__(self):
        # Our checks run first, so a bad `credit_*` value is reported before any device or precision check of TRL's.
        if self.credit_mode is False:  # YAML 1.1 reads a bare `off` as the boolean false
            self.credit_mode = "off"
        if isinstance(self.credit_private_columns, str):  # CLI / YAML may give a comma-separated string
            self.credit_private_columns = [self.credit_private_columns]
        self.credit_private_columns = [  # `--credit_private_columns a,b` arrives as ['a,b']
            part.strip() for entry in self.credit_private_columns for part in str(entry).split(",") if part.strip()
        ]
        _check_choice("credit_mode", self.credit_mode, CREDIT_MODES)
        _check_choice("credit_divergence", self.credit_divergence, DIVERGENCES)
        _check_choice("credit_reference_backend", self.credit_reference_backend, REFERENCE_BACKENDS)
        _check_choice("credit_reference_fallback", self.credit_reference_fallback, REFERENCE_FALLBACKS)
        _check_choice("credit_sdpo_distillation_mode", self.credit_sdpo_distillation_mode, SDPO_DISTILLATION_MODES)
        for name in ("credit_sdpo_alpha", "credit_sdpo_distillation_weight"):
            _check(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "must be in [0, 1]")
        _check(self.credit_cap > 1.0, "credit_cap", self.credit_cap, "must be > 1 (W is clipped to [1, credit_cap])")
        _check(self.credit_gamma >= 0.0, "credit_gamma", self.credit_gamma, "must be >= 0 (W must never go below 1)")
        for name in (
            "credit_top_k",
            "credit_chunk_size",
            "credit_max_span",
            "credit_reference_concurrency",
            "credit_reference_max_input_tokens",
            "credit_reference_max_tokens",
            "credit_observation_max_chars",
            "credit_inert_steps",
            "credit_sdpo_top_k",
        ):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        if self.credit_scoring_batch_size is not None:
            _check(
                self.credit_scoring_batch_size >= 1,
                "credit_scoring_batch_size",
                self.credit_scoring_batch_size,
                "must be >= 1 or None",
            )
        _check(
            self.credit_reference_deadline > 0,
            "credit_reference_deadline",
            self.credit_reference_deadline,
            "must be > 0 seconds",
        )
        _check(
            self.credit_reference_retries >= 0,
            "credit_reference_retries",
            self.credit_reference_retries,
            "must be >= 0",
        )
        _check(
            self.credit_max_resample_rounds >= 0,
            "credit_max_resample_rounds",
            self.credit_max_resample_rounds,
            "must be >= 0",
        )
        _check(
            0.0 <= self.credit_min_mixed_fraction <= 1.0,
            "credit_min_mixed_fraction",
            self.credit_min_mixed_fraction,
            "must be in [0, 1]",
        )
        _check(self.credit_saturation_z > 0, "credit_saturation_z", self.credit_saturation_z, "must be > 0")
        _check(
            self.credit_spike_z > self.credit_reset_z,
            "credit_spike_z",
            self.credit_spike_z,
            f"must be > credit_reset_z ({self.credit_reset_z})",
        )
        _check(self.credit_entropy_rise >= 0, "credit_entropy_rise", self.credit_entropy_rise, "must be >= 0")
        _check(self.credit_min_divergence >= 0, "credit_min_divergence", self.credit_min_divergence, "must be >= 0")
        _check(self.credit_direct_sd_coef >= 0, "credit_direct_sd_coef", self.credit_direct_sd_coef, "must be >= 0")
        if self.credit_reference_backend == "litellm" and not self.credit_reference_model:
            raise ValueError(
                "credit_reference_model must be set when credit_reference_backend='litellm' "
                "(e.g. 'openai/gpt-4o-mini', or 'hosted_vllm/<name>' with credit_reference_api_base)."
            )
        super().__post_init__()


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}.")


def _check(ok: bool, name: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} {why}.")
