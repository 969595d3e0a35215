"""`SGCDConfig`: GRPOConfig plus the `credit_*` fields of Sibling-Guided Credit Distillation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import GRPOConfig

from trl_sgcd.credit.modes import MODES

CREDIT_MODES = tuple(MODES)
SDPO_DISTILLATION_MODES = ("topk_logits", "sampled_token")
DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
REFERENCE_BACKENDS = ("contrast", "litellm")
REFERENCE_FALLBACKS = ("contrast", "none")

logger = logging.getLogger(__name__)


_NOTED: list[bool] = []  # the CPU-precision line is logged once per process


def _help(doc: str, name: str) -> str:
    """The text of `name`'s entry in a TRL-format `Parameters:` docstring, joined into one paragraph."""
    if doc is None:  # python -OO strips docstrings
        return ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name} (`"))
    indent = len(lines[start]) - len(lines[start].lstrip())
    text = []
    for line in lines[start + 1 :]:
        if not line.strip() or len(line) - len(line.lstrip()) <= indent:
            break
        text.append(line.strip())
    return " ".join(text)


@dataclass
class SGCDConfig(GRPOConfig):
    r"""
    Configuration class for [`SGCDTrainer`]: everything of [`~trl.GRPOConfig`] plus the credit settings of SGCD
    ("Keep Policy Gradient in Charge", arXiv 2606.12634). Every new field starts with `credit_`, so none shadows a
    GRPO field (`GRPOConfig` already owns `top_k`, `beta` and `temperature`).

    Three defaults differ from `GRPOConfig`, so that a config works as built and runs quietly: when `bf16` is left unset
    (`None`) and no bf16-capable GPU is found, `bf16` is `False` (with a log line) instead of `True`, which
    `TrainingArguments` would reject on such a machine; `gradient_checkpointing` (TRL's own field, default `True`) is
    passed on as transformers' new `activation_checkpointing` name, without transformers' deprecation warning; and an
    unset `ddp_find_unused_parameters` is `False` (every parameter that requires grad takes part in the SGCD loss, so
    DDP's search for unused ones only costs time and warns). Set `ddp_find_unused_parameters=True` for a model with
    parameters a forward can skip (e.g. a mixture of experts under DDP).

    Parameters:
        > Parameters that select the method

        credit_mode (`str`, *optional*, defaults to `"sgcd"`):
            Which credit method runs. `"sgcd"`: the full method: a credit reference per mixed group, dense
            teacher/student divergence, saliency spans, token weights W = clip(1 + gamma * s, 1, cap) on the GRPO
            advantage. `"off"`: no reference, no scoring, W = 1: exactly GRPO (the matched baseline).
            `"no_reference"`: the teacher context is a raw successful sibling (never the row itself) instead of a
            credit reference; no LLM is called. `"uniform"`: the full pipeline, but each rollout's W is replaced by its
            mean over eligible tokens (same credit mass, no localisation). `"direct_sd"`: GRPO plus an uncapped
            teacher-matching KL auxiliary loss with gradient (the ablation the paper shows falls below GRPO).
            `"sdpo"`: the SDPO comparator (paper, Table 7): self-distillation from a successful sibling (never the row
            itself) replaces the reward; see the `credit_sdpo_*` fields. What each mode does: `trl_sgcd.credit.modes`.
        credit_success_threshold (`float`, *optional*, defaults to `1.0`):
            A rollout succeeds when its total reward is >= this value. A group is mixed when 0 < #success < G.
        credit_gamma (`float`, *optional*, defaults to `1.0`):
            Gain gamma in W = clip(1 + gamma * s, 1, cap). Must be >= 0 (0 gives W = 1, i.e. GRPO).
        credit_cap (`float`, *optional*, defaults to `2.0`):
            Cap c of the token weight: W is clipped to [1, c], so |A * W| <= c |A|. Must be > 1.

        > Parameters that control dynamic sampling

        credit_dynamic_sampling (`bool` or `None`, *optional*, defaults to `None`):
            Whether to run dynamic sampling (DAPO's rule): extra generation rounds while too few groups of a generation
            batch are mixed, mixed groups kept first; each extra round logs one progress line. `None` (the default):
            on in the credit modes, off in `"off"` (so `"off"` stays GRPO bit for bit). Set it explicitly to compare
            arms: `True` in every arm, `"off"` included, gives the matched GRPO control (DAPO-style GRPO) the recipes
            use. Needs a map-style dataset and whole groups on each rank (otherwise off, with a warning).
        credit_min_mixed_fraction (`float`, *optional*, defaults to `1.0`):
            Stop resampling once this fraction of the batch can be filled with mixed groups (1.0: only mixed groups,
            DAPO's rule). At the round limit non-mixed groups fill the rest (logged). Must be in [0, 1].
        credit_max_resample_rounds (`int`, *optional*, defaults to `2`):
            Bound on extra generation rounds per batch for dynamic sampling.

        > Parameters that control the credit reference

        credit_reference_backend (`str`, *optional*, defaults to `"contrast"`):
            Where the credit reference comes from. `"contrast"`: the offline, deterministic contrast builder (no model,
            no key). `"litellm"`: an external LLM through litellm (needs `credit_reference_model`).
        credit_reference_model (`str` or `None`, *optional*, defaults to `None`):
            litellm model name, e.g. `"openai/gpt-4o-mini"` or `"hosted_vllm/Qwen3-32B"`. Required with
            `credit_reference_backend="litellm"`.
        credit_reference_api_base (`str` or `None`, *optional*, defaults to `None`):
            Base URL of an OpenAI-compatible server for the litellm backend, e.g. `"http://127.0.0.1:8000/v1"`.
        credit_reference_api_key_env (`str` or `None`, *optional*, defaults to `None`):
            Name of the environment variable that holds the API key (the key itself never goes in a config file). With
            the litellm backend, a named variable that is not set is a `ValueError`; `None` declares a server that
            needs no key (a local one), or leaves the key to litellm's own provider variables (`OPENAI_API_KEY`).
        credit_private_columns (`list[str]`, *optional*, defaults to `[]`):
            Dataset columns whose values (gold answers, gold actions) are masked wherever they appear in the evidence.
            A comma-separated string is accepted.
        credit_reference_cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Disk cache of references keyed by a hash of the sanitized evidence and the model; `None` disables it.
        credit_reference_fallback (`str`, *optional*, defaults to `"contrast"`):
            What a group gets when the LLM fails: `"contrast"` (the offline reference) or `"none"` (W = 1).

        > Parameters of the ablations and the SDPO comparator

        credit_direct_sd_coef (`float`, *optional*, defaults to `0.1`):
            Coefficient of the teacher-matching KL in `credit_mode="direct_sd"`.
        credit_sdpo_distillation_mode (`str`, *optional*, defaults to `"topk_logits"`):
            `"topk_logits"`: the paper's Table 7 SDPO, a divergence on the teacher's top-K support plus a tail bucket
            as the loss (TRL SDPOTrainer's `distillation_mode="topk_logits"`, `distillation_add_tail=True`).
            `"sampled_token"`: the teacher/student log-ratio of the sampled tokens is the advantage (TRL's default).
        credit_sdpo_top_k (`int`, *optional*, defaults to `100`):
            K of the top-K support in `"topk_logits"` (Table 7: about 100).
        credit_sdpo_alpha (`float`, *optional*, defaults to `0.5`):
            The divergence (TRL's `distillation_alpha`): 0 = KL(teacher || student), 1 = KL(student || teacher),
            0.5 = symmetric JSD (Table 7). Must be in [0, 1].
        credit_sdpo_distillation_weight (`float`, *optional*, defaults to `1.0`):
            Weight w of the distillation term; GRPO's surrogate keeps 1 - w of the advantage (1.0: pure SDPO, the
            reward replaced). TRL's `distillation_weight`. Must be in [0, 1].

        > Parameters that control logging and the validity checks

        credit_log_table (`bool`, *optional*, defaults to `True`):
            Whether to log a per-step W&B table with the reference and each rollout shaded by its weights (when W&B is
            on).
        credit_strict (`bool`, *optional*, defaults to `False`):
            Whether to raise instead of warn when a validity check fails (all-zero features, inert weights, weights
            > 1 on tokens outside TRL's loss mask, weights that require grad).
        credit_inert_steps (`int`, *optional*, defaults to `10`):
            Steps with mixed groups but no credit token before the inert-weights check fires.

        > Expert parameters: the dense divergence (defaults measured; each says when to touch it)

        credit_divergence (`str`, *optional*, defaults to `"reverse_kl"`):
            Per-token divergence between the student (clean prompt) and the teacher (prompt with the reference) on the
            same completion: `"reverse_kl"` (KL(student || teacher), the paper's default), `"forward_kl"`
            (KL(teacher || student)) or `"jsd"` (Jensen-Shannon).
            Touch it for a divergence ablation; the paper and the benchmarks use the default.
        credit_top_k (`int`, *optional*, defaults to `32`):
            Size K of the teacher top-K support over which the divergence is computed (plus the observed token and one
            tail bucket). With K >= the vocabulary size it equals the full-vocabulary divergence.
            Touch it only for a large vocabulary whose mass spreads past 32 tokens (cost grows with K).

        > Expert parameters: saliency (the segmenter)

        credit_spike_z (`float`, *optional*, defaults to `3.0`):
            A token is a divergence spike when its robust z-score (median / MAD over the rollout's eligible tokens)
            reaches this value. Must be > `credit_reset_z`. The three segmenter defaults were chosen on the controlled
            tier of the localization benchmark (`benchmarks/bench_credit_controlled.py --sweep`, 24 TRAIN-task
            failures, README "Where credit lands"): with the others at their defaults, 3.0 gives median lift 5.52 /
            7.78 (base / warm-started SmolLM2) where 2.0 gives 5.01 / 7.57.
            Touch it only with the localization benchmark at hand (`--sweep`): it moves where credit lands.
        credit_saturation_z (`float`, *optional*, defaults to `8.0`):
            z-score at which saliency reaches 1 (s = clip(z / saturation, 0, 1) at the span's peak). Must be > 0.
            Decisive spikes reach z 10-20 while incidental ones stay near the spike threshold, so saliency is graded
            over that range: median lift 5.52 / 7.78 at 8.0, 5.13 / 7.20 at 4.0, 5.96 / 7.77 at 16.0.
            Touch it only with the localization benchmark at hand, like `credit_spike_z`.
        credit_reset_z (`float`, *optional*, defaults to `1.0`):
            A span ends when the z-score falls below this value (the divergence is back to the rollout's usual level).
            The former -0.5 (below the median) kept spans open until an entropy rise or `credit_max_span`: W > 1 on
            54 / 44 percent of eligible tokens and median lift 1.75 / 2.04 (with the former spike 2.0 and saturation 4.0);
            the three defaults give 9 / 5 percent and 5.52 / 7.78.
            Touch it only with the localization benchmark at hand, like `credit_spike_z`.
        credit_entropy_rise (`float`, *optional*, defaults to `0.5`):
            A span ends when the teacher entropy rises more than this many nats above its value at the span start.
            Touch it only when spans visibly run past the decisive tokens in the credit table.
        credit_max_span (`int`, *optional*, defaults to `32`):
            Longest span, in tokens.
            Touch it only when decisive actions are longer than 32 tokens (long tool arguments).
        credit_min_divergence (`float`, *optional*, defaults to `1e-4`):
            Spikes below this divergence (nats) are ignored, so numerical noise never makes credit.
            Touch it only if a near-identical teacher and student still produce spikes (noise).

        > Expert parameters: the reference LLM transport and budgets

        credit_reference_deadline (`float`, *optional*, defaults to `60.0`):
            Hard deadline in seconds for one LLM call, retries excluded; enforced with `asyncio.wait_for`.
            Touch it when a slow LLM endpoint times out (`sgcd/reference/timeouts`).
        credit_reference_retries (`int`, *optional*, defaults to `3`):
            Retries on rate limits (429), server errors (5xx) and timeouts, with exponential backoff and jitter.
            Touch it when a rate-limited endpoint fails groups (`sgcd/reference/rate_limited`).
        credit_reference_step_budget (`float`, *optional*, defaults to `60.0`):
            Wall seconds for one step's whole reference build (evidence, every LLM request, retry, backoff and wave);
            groups still waiting when it is spent fall back. A hung endpoint costs a step at most this.
            Touch it when reference building dominates the step time or falls back too often.
        credit_reference_concurrency (`int`, *optional*, defaults to `8`):
            LLM calls in flight at once.
            Touch it to match the endpoint's rate limit.
        credit_reference_max_input_tokens (`int`, *optional*, defaults to `12000`):
            Token budget of the sibling evidence sent to the LLM (the selection rule of the paper's appendix applies).
            Touch it when the reference model's context is smaller than 12k tokens.
        credit_reference_max_tokens (`int`, *optional*, defaults to `512`):
            Cap on the reference, both as LLM output and as inserted teacher context. The task prompt is never cut.
            Touch it when references are cut (a longer cap costs teacher-forward tokens).
        credit_observation_max_chars (`int`, *optional*, defaults to `512`):
            Tool observations longer than this are truncated in the evidence before any sibling is dropped.
            Touch it when decisive facts sit deep in long tool outputs.

        > Expert parameters: scoring performance (results unchanged up to float rounding)

        credit_chunk_size (`int`, *optional*, defaults to `256`):
            Number of completion positions whose vocabulary logits are materialised at once while scoring (bounds
            memory; does not change the result).
            Touch it when scoring runs out of memory (smaller) or a large GPU idles (larger).
        credit_scoring_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Rollouts per scoring forward; `None` uses `per_device_train_batch_size`.
            Touch it when scoring runs out of memory (smaller than the train batch).
        credit_share_prefix (`bool`, *optional*, defaults to `True`):
            Whether to encode the prompt prefix common to a scoring micro-batch once (a group's prompt, the system
            message and tool schemas) and score the completions on its key/value cache; equal to unshared scoring up to
            float rounding. Off under DeepSpeed ZeRO-3 (every rank must run the same forwards).
            Touch it only to debug scoring (`False` scores every row on its own).
        credit_compact_lm_head (`bool`, *optional*, defaults to `True`):
            Whether to let TRL's fused LM head score only the completion positions on CPU (as it does on Triton devices)
            instead of every prompt position too; applies in every mode, `off` included. Equal up to float rounding;
            `False` makes `off` GRPO bit for bit on CPU. No effect on GPUs (see `trl_sgcd.lm_head`).
            Touch it only to check GRPO parity on CPU (`False`).
    """

    # Each help text is the field's entry in the docstring above (`--help` shows it in full).
    credit_mode: str = field(
        default="sgcd", metadata={"help": _help(__doc__, "credit_mode"), "choices": list(CREDIT_MODES)}
    )
    credit_success_threshold: float = field(default=1.0, metadata={"help": _help(__doc__, "credit_success_threshold")})
    credit_gamma: float = field(default=1.0, metadata={"help": _help(__doc__, "credit_gamma")})
    credit_cap: float = field(default=2.0, metadata={"help": _help(__doc__, "credit_cap")})
    credit_dynamic_sampling: bool | None = field(
        default=None, metadata={"help": _help(__doc__, "credit_dynamic_sampling")}
    )
    credit_min_mixed_fraction: float = field(
        default=1.0, metadata={"help": _help(__doc__, "credit_min_mixed_fraction")}
    )
    credit_max_resample_rounds: int = field(default=2, metadata={"help": _help(__doc__, "credit_max_resample_rounds")})
    credit_reference_backend: str = field(
        default="contrast",
        metadata={"help": _help(__doc__, "credit_reference_backend"), "choices": list(REFERENCE_BACKENDS)},
    )
    credit_reference_model: str | None = field(
        default=None, metadata={"help": _help(__doc__, "credit_reference_model")}
    )
    credit_reference_api_base: str | None = field(
        default=None, metadata={"help": _help(__doc__, "credit_reference_api_base")}
    )
    credit_reference_api_key_env: str | None = field(
        default=None, metadata={"help": _help(__doc__, "credit_reference_api_key_env")}
    )
    credit_private_columns: list[str] = field(
        default_factory=list, metadata={"help": _help(__doc__, "credit_private_columns")}
    )
    credit_reference_cache_dir: str | None = field(
        default=None, metadata={"help": _help(__doc__, "credit_reference_cache_dir")}
    )
    credit_reference_fallback: str = field(
        default="contrast",
        metadata={"help": _help(__doc__, "credit_reference_fallback"), "choices": list(REFERENCE_FALLBACKS)},
    )
    credit_direct_sd_coef: float = field(default=0.1, metadata={"help": _help(__doc__, "credit_direct_sd_coef")})
    credit_sdpo_distillation_mode: str = field(
        default="topk_logits",
        metadata={"help": _help(__doc__, "credit_sdpo_distillation_mode"), "choices": list(SDPO_DISTILLATION_MODES)},
    )
    credit_sdpo_top_k: int = field(default=100, metadata={"help": _help(__doc__, "credit_sdpo_top_k")})
    credit_sdpo_alpha: float = field(default=0.5, metadata={"help": _help(__doc__, "credit_sdpo_alpha")})
    credit_sdpo_distillation_weight: float = field(
        default=1.0, metadata={"help": _help(__doc__, "credit_sdpo_distillation_weight")}
    )
    credit_log_table: bool = field(default=True, metadata={"help": _help(__doc__, "credit_log_table")})
    credit_strict: bool = field(default=False, metadata={"help": _help(__doc__, "credit_strict")})
    credit_inert_steps: int = field(default=10, metadata={"help": _help(__doc__, "credit_inert_steps")})
    credit_divergence: str = field(
        default="reverse_kl", metadata={"help": _help(__doc__, "credit_divergence"), "choices": list(DIVERGENCES)}
    )
    credit_top_k: int = field(default=32, metadata={"help": _help(__doc__, "credit_top_k")})
    credit_spike_z: float = field(default=3.0, metadata={"help": _help(__doc__, "credit_spike_z")})
    credit_saturation_z: float = field(default=8.0, metadata={"help": _help(__doc__, "credit_saturation_z")})
    credit_reset_z: float = field(default=1.0, metadata={"help": _help(__doc__, "credit_reset_z")})
    credit_entropy_rise: float = field(default=0.5, metadata={"help": _help(__doc__, "credit_entropy_rise")})
    credit_max_span: int = field(default=32, metadata={"help": _help(__doc__, "credit_max_span")})
    credit_min_divergence: float = field(default=1e-4, metadata={"help": _help(__doc__, "credit_min_divergence")})
    credit_reference_deadline: float = field(
        default=60.0, metadata={"help": _help(__doc__, "credit_reference_deadline")}
    )
    credit_reference_retries: int = field(default=3, metadata={"help": _help(__doc__, "credit_reference_retries")})
    credit_reference_step_budget: float = field(
        default=60.0, metadata={"help": _help(__doc__, "credit_reference_step_budget")}
    )
    credit_reference_concurrency: int = field(
        default=8, metadata={"help": _help(__doc__, "credit_reference_concurrency")}
    )
    credit_reference_max_input_tokens: int = field(
        default=12000, metadata={"help": _help(__doc__, "credit_reference_max_input_tokens")}
    )
    credit_reference_max_tokens: int = field(
        default=512, metadata={"help": _help(__doc__, "credit_reference_max_tokens")}
    )
    credit_observation_max_chars: int = field(
        default=512, metadata={"help": _help(__doc__, "credit_observation_max_chars")}
    )
    credit_chunk_size: int = field(default=256, metadata={"help": _help(__doc__, "credit_chunk_size")})
    credit_scoring_batch_size: int | None = field(
        default=None, metadata={"help": _help(__doc__, "credit_scoring_batch_size")}
    )
    credit_share_prefix: bool = field(default=True, metadata={"help": _help(__doc__, "credit_share_prefix")})
    credit_compact_lm_head: bool = field(default=True, metadata={"help": _help(__doc__, "credit_compact_lm_head")})

    def __post_init__(self):
        # Our checks run first, so a bad `credit_*` value is reported before any device or precision check of TRL's.
        if self.credit_mode is False:  # YAML 1.1 reads a bare `off` as the boolean false
            self.credit_mode = "off"
        if isinstance(self.credit_private_columns, str):  # CLI / YAML may give a comma-separated string
            self.credit_private_columns = [self.credit_private_columns]
        self.credit_private_columns = [  # `--credit_private_columns a,b` arrives as ['a,b']
            part.strip() for entry in self.credit_private_columns for part in str(entry).split(",") if part.strip()
        ]
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; choose one of {list(choices)}.")
        for name, ok, why in _RULES:
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name}={value!r} {why}.")
        if self.credit_dynamic_sampling is None:  # on in the credit modes, off in `off` (GRPO bit for bit)
            self.credit_dynamic_sampling = MODES[self.credit_mode].scores
        if self.credit_spike_z <= self.credit_reset_z:
            raise ValueError(
                f"credit_spike_z={self.credit_spike_z!r} must be > credit_reset_z ({self.credit_reset_z})."
            )
        if self.credit_reference_backend == "litellm" and not self.credit_reference_model:
            raise ValueError(
                "credit_reference_model must be set when credit_reference_backend='litellm' "
                "(e.g. 'openai/gpt-4o-mini', or 'hosted_vllm/<name>' with credit_reference_api_base)."
            )
        from trl_sgcd.credit.reference.builder import check_api_key, uses_reference_llm

        if uses_reference_llm(self):  # as the CLI does: a named key variable that is not set is an error now
            check_api_key(self.credit_reference_api_key_env)
        self._resolve_device_defaults()
        super().__post_init__()

    def _resolve_device_defaults(self) -> None:
        """CPU-safe `bf16` when unset, `gradient_checkpointing` under its new name, no DDP unused-parameter search."""
        if self.bf16 is None and not self.fp16 and not _has_bf16_accelerator():
            self.bf16 = False  # GRPOConfig would pick True, which TrainingArguments rejects without such a GPU
            if not _NOTED:
                _NOTED.append(True)
                logger.warning("SGCDConfig: bf16 unset and no bf16-capable GPU found: training in fp32 (bf16=False).")
        # transformers >= 5.24 renames `gradient_checkpointing*` to `activation_checkpointing*` and warns whenever an old
        # name holds a value, but TRL documents the old name as its own field (default True): every GRPO config warned.
        if getattr(self, "activation_checkpointing", False) is None:
            self.activation_checkpointing = self.gradient_checkpointing
            if self.activation_checkpointing_kwargs is None:
                self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False


_CHOICES = {
    "credit_mode": CREDIT_MODES,
    "credit_divergence": DIVERGENCES,
    "credit_reference_backend": REFERENCE_BACKENDS,
    "credit_reference_fallback": REFERENCE_FALLBACKS,
    "credit_sdpo_distillation_mode": SDPO_DISTILLATION_MODES,
}
_AT_LEAST_ONE = (
    "credit_top_k",
    "credit_chunk_size",
    "credit_max_span",
    "credit_reference_concurrency",
    "credit_reference_max_input_tokens",
    "credit_reference_max_tokens",
    "credit_observation_max_chars",
    "credit_inert_steps",
    "credit_sdpo_top_k",
    "credit_scoring_batch_size",  # None (the default) is allowed
)
# (field, predicate, reason): checked in this order, the first failure raises a ValueError naming the field
_RULES = [
    ("credit_cap", lambda v: v > 1.0, "must be > 1 (W is clipped to [1, credit_cap])"),
    ("credit_gamma", lambda v: v >= 0.0, "must be >= 0 (W must never go below 1)"),
    *((name, lambda v: v >= 1, "must be >= 1") for name in _AT_LEAST_ONE),
    ("credit_reference_deadline", lambda v: v > 0, "must be > 0 seconds"),
    ("credit_reference_step_budget", lambda v: v > 0, "must be > 0 seconds"),
    ("credit_reference_retries", lambda v: v >= 0, "must be >= 0"),
    ("credit_max_resample_rounds", lambda v: v >= 0, "must be >= 0"),
    ("credit_min_mixed_fraction", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    ("credit_saturation_z", lambda v: v > 0, "must be > 0"),
    ("credit_entropy_rise", lambda v: v >= 0, "must be >= 0"),
    ("credit_min_divergence", lambda v: v >= 0, "must be >= 0"),
    ("credit_direct_sd_coef", lambda v: v >= 0, "must be >= 0"),
    ("credit_sdpo_alpha", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    ("credit_sdpo_distillation_weight", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
]


def refuse_unsupported(args, *, is_vlm: bool = False) -> None:
    """Refuse, at construction, combinations whose credit would be silently wrong (`is_vlm`: the model takes images,
    known once TRL has loaded it)."""
    if not MODES[args.credit_mode].scores:
        return
    if is_vlm:
        raise ValueError(
            "SGCDTrainer does not score vision-language inputs yet: the dense teacher/student scoring passes no "
            "images, so its divergence would be wrong. Use a text model, or credit_mode='off' (plain GRPO)."
        )
    if args.loss_type == "vespo":
        raise ValueError(
            f"credit_mode={args.credit_mode!r} with loss_type='vespo' is not supported: VESPO weights whole sequences "
            "by their importance ratio, so token-level credit weights have no defined meaning there. Use loss_type "
            "'dapo', 'grpo', 'bnpo' or 'dr_grpo', or credit_mode='off'."
        )


def _has_bf16_accelerator() -> bool:
    """Whether TrainingArguments accepts `bf16=True` without `use_cpu` (a bf16 GPU, or XLA)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return is_torch_bf16_gpu_available() or is_torch_xla_available()
