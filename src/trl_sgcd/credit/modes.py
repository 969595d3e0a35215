"""The credit modes: one frozen record per `credit_mode`, the only place that knows what each mode does.

Every other module asks the record (`mode.scores`, `mode.context`, ...) instead of comparing mode names, so a new
ablation is one new entry here.

| mode | groups with a teacher | teacher context | weights in A * W | advantage TRL gets | extra loss |
| --- | --- | --- | --- | --- | --- |
| `off` | none | none | none (W = 1) | GRPO's | none |
| `sgcd` | mixed | credit reference | localised | A * W | none |
| `no_reference` | mixed | another successful sibling | localised | A * W | none |
| `uniform` | mixed | credit reference | per-rollout mean | A * W | none |
| `direct_sd` | mixed | credit reference | none (W = 1) | GRPO's | teacher-matching KL |
| `sdpo` | with a success | another successful sibling | none | A * (1 - w) | SDPO's top-K JSD |
| `sdpo`, sampled token | with a success | another successful sibling | none | A * (1 - w) + w log(q/p) | none |

`sdpo` has two records, chosen by `credit_sdpo_distillation_mode` ([`credit_mode_of`]): `"topk_logits"` (the paper's
Table 7: a JSD on the teacher's top-K support as the loss, GRPO's surrogate scaled by `1 - w`, w =
`credit_sdpo_distillation_weight`) or `"sampled_token"` (TRL's default: the teacher/student log-ratio of the sampled
tokens is added to the scaled advantage, no extra loss).
"""

from __future__ import annotations

from dataclasses import dataclass

TEACHER_GROUPS = ("none", "mixed", "with_success")
CONTEXTS = ("none", "reference", "sibling")
WEIGHTS = ("none", "localised", "uniform")
ADVANTAGES = ("grpo", "credit", "sdpo", "sdpo_sampled_token")
EXTRA_LOSSES = (None, "teacher_kl", "sdpo")


@dataclass(frozen=True)
class CreditMode:
    r"""
    What one `credit_mode` does at each stage of the credit pipeline.

    Args:
        name (`str`): the `credit_mode` value.
        teacher_groups (`str`): which sibling groups get a teacher: `"none"`, `"mixed"` (0 < #success < G) or
            `"with_success"` (#success > 0).
        context (`str`): the teacher context: `"none"`, `"reference"` (the credit reference of the group, from the
            reference builder) or `"sibling"` (a raw successful sibling other than the row itself, no LLM).
        weights (`str`): the credit weights that enter A * W: `"none"` (W = 1), `"localised"` (W = clip(1 + gamma*s,
            1, c)) or `"uniform"` (each rollout's W replaced by its mean over eligible tokens).
        advantage (`str`): the advantage TRL's surrogate receives: `"grpo"` (unchanged), `"credit"` (A * W, `(B, T)`)
            `"sdpo"` (GRPO's scaled by `1 - credit_sdpo_distillation_weight`) or `"sdpo_sampled_token"` (that plus the
            weighted teacher/student log-ratio of the sampled tokens).
        extra_loss (`str` or `None`): a second loss term with gradient: `None`, `"teacher_kl"` (the `direct_sd`
            ablation) or `"sdpo"` (the comparator's distillation loss).
        summary (`str`): one line for help texts and logs.
    """

    name: str
    teacher_groups: str
    context: str
    weights: str
    advantage: str
    extra_loss: str | None
    summary: str

    def __post_init__(self):
        for field_name, choices in (
            ("teacher_groups", TEACHER_GROUPS),
            ("context", CONTEXTS),
            ("weights", WEIGHTS),
            ("advantage", ADVANTAGES),
            ("extra_loss", EXTRA_LOSSES),
        ):
            if getattr(self, field_name) not in choices:
                raise ValueError(f"CreditMode.{field_name}={getattr(self, field_name)!r}; choose one of {choices}.")

    @property
    def scores(self) -> bool:
        """Whether the mode runs the dense teacher/student comparison at all (`off` does not: exactly GRPO)."""
        return self.teacher_groups != "none"

    @property
    def uses_reference_builder(self) -> bool:
        """Whether the teacher context comes from the reference builder (contrast builder or LLM)."""
        return self.context == "reference"

    @property
    def teacher_targets(self) -> bool:
        """Whether the scorer keeps the teacher's top-K log-probabilities as the targets of an extra loss."""
        return self.extra_loss is not None

    @property
    def weights_carry_credit(self) -> bool:
        """Whether W > 1 is expected on some tokens (what the inert-weights validity check watches)."""
        return self.weights != "none"

    def group_gets_teacher(self, num_success: int, group_size: int) -> bool:
        """Whether a group with `num_success` successes out of `group_size` gets a teacher in this mode."""
        if self.teacher_groups == "mixed":
            return 0 < num_success < group_size
        if self.teacher_groups == "with_success":
            return num_success > 0
        return False


MODES: dict[str, CreditMode] = {
    mode.name: mode
    for mode in (
        CreditMode("sgcd", "mixed", "reference", "localised", "credit", None, "the full method"),
        CreditMode("off", "none", "none", "none", "grpo", None, "no reference, no scoring, W = 1: exactly GRPO"),
        CreditMode(
            "no_reference",
            "mixed",
            "sibling",
            "localised",
            "credit",
            None,
            "the teacher context is another successful sibling instead of a credit reference",
        ),
        CreditMode(
            "uniform",
            "mixed",
            "reference",
            "uniform",
            "credit",
            None,
            "each rollout's W is replaced by its mean over eligible tokens (same credit mass, no localisation)",
        ),
        CreditMode(
            "direct_sd",
            "mixed",
            "reference",
            "none",
            "grpo",
            "teacher_kl",
            "GRPO plus an uncapped teacher-matching KL with gradient (the paper's failing ablation)",
        ),
        CreditMode(
            "sdpo",
            "with_success",
            "sibling",
            "none",
            "sdpo",
            "sdpo",
            "the SDPO comparator: self-distillation from another successful sibling replaces the reward",
        ),
    )
}


SDPO_SAMPLED_TOKEN = CreditMode(
    "sdpo",
    "with_success",
    "sibling",
    "none",
    "sdpo_sampled_token",
    None,
    "SDPO with credit_sdpo_distillation_mode='sampled_token': the teacher/student log-ratio joins the advantage",
)
"""The `sdpo` record under `credit_sdpo_distillation_mode="sampled_token"` (see [`credit_mode_of`])."""


def credit_mode(name: str) -> CreditMode:
    """The record of `credit_mode=name`; a `ValueError` naming `credit_mode` for an unknown one."""
    if name not in MODES:
        raise ValueError(f"credit_mode={name!r} is not supported; choose one of {list(MODES)}.")
    return MODES[name]


def credit_mode_of(args) -> CreditMode:
    """The record a config runs: `credit_mode`, with `sdpo`'s variant from `credit_sdpo_distillation_mode`."""
    mode = credit_mode(args.credit_mode)
    if mode.name == "sdpo" and getattr(args, "credit_sdpo_distillation_mode", "topk_logits") == "sampled_token":
        return SDPO_SAMPLED_TOKEN
    return mode


__all__ = ["MODES", "SDPO_SAMPLED_TOKEN", "CreditMode", "credit_mode", "credit_mode_of"]
