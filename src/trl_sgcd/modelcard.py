"""The model card of an SGCD run: `README.md` in the folder a user pushes, written at the end of every training run
and into every saved `checkpoint-*` folder.

TRL's card links `https://huggingface.co/<base model>`, which is `None` (or a cache path) for a local or builtin model,
is titled by the output folder's last name, and says nothing about the method's settings. This card is titled by the
run (`hub_model_id`, else `run_name`, else the output folder's name), names the real base model (a Hub id is linked;
`builtin:smollm2` is "HuggingFaceTB/SmolLM2-135M-Instruct (bundled)"; a local folder is named by its last path part,
never a cache path), and lists the data, environment, rewards and steps, the credit settings and the final `sgcd/`
metrics. A row whose value is unknown is left out. The training reward is reported only when every reward function is
a verifier (a training-only reward such as `scripted_sibling_reward` would read as a fake score); an evaluation score is
reported only when the caller passes one that was measured with the environment's verifier (the demo does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from transformers import TrainerCallback

CREDIT_SETTINGS = (  # (label, SGCDConfig field), in the order the card lists them
    ("Credit mode", "credit_mode"),
    ("Reference backend", "credit_reference_backend"),
    ("Reference model", "credit_reference_model"),
    ("Gain gamma", "credit_gamma"),
    ("Weight cap c", "credit_cap"),
    ("Divergence", "credit_divergence"),
    ("Teacher top-K", "credit_top_k"),
    ("Dynamic sampling", "credit_dynamic_sampling"),
    ("Min. mixed-group fraction", "credit_min_mixed_fraction"),
    ("Max. resample rounds", "credit_max_resample_rounds"),
)
# Settings that only mean something when credit acts (left out of the card of a `credit_mode="off"` run).
_CREDIT_ONLY = {
    "credit_reference_backend",
    "credit_reference_model",
    "credit_gamma",
    "credit_cap",
    "credit_divergence",
    "credit_top_k",
}
_DYNAMIC_ONLY = {"credit_min_mixed_fraction", "credit_max_resample_rounds"}
GRPO_SETTINGS = (
    ("Generations per prompt", "num_generations"),
    ("Learning rate", "learning_rate"),
    ("Temperature", "temperature"),
    ("Top-p", "top_p"),
    ("Max. completion length", "max_completion_length"),
    ("Max. tool-calling iterations", "max_tool_calling_iterations"),
    ("KL coefficient beta", "beta"),
    ("Loss type", "loss_type"),
)
CITATION = """@article{ding2026sgcd,
    title   = {{Keep Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use Agents}},
    author  = {Ding, Tianyu and Xin, Jianhong and De la Cruz Weinstein, Juan Pablo},
    year    = 2026,
    eprint  = {2606.12634},
    archivePrefix = {arXiv},
}"""
PAPER_TITLE = "Keep Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use Agents"
PAPER_ID = "2606.12634"

# builtin model name -> (what the card calls it, the Hub id it derives from or None)
BUILTIN_BASE_MODELS = {
    "builtin:smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct (bundled)", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "builtin:tiny": ("builtin:tiny (a random 2-layer Llama for tests)", None),
    "builtin:tiny-context": ("builtin:tiny-context (a random 2-layer Llama for tests)", None),
}
# the `kind` of a cached builtin folder's marker (`trl_sgcd.tooluse.models`), and the warm start's `model` setting
_MARKER_KINDS = {"bundled": "builtin:smollm2", "tiny": "builtin:tiny", "tiny-context": "builtin:tiny-context"}
_WARM_START_MODELS = {"smollm2-135m": "builtin:smollm2", "tiny": "builtin:tiny"}


@dataclass
class RunFacts:
    """What a card says about a run besides its config and its log. `None` or empty means unknown: no row."""

    base_model: str | None = None  # the name the run was given: a Hub id, a folder, a `builtin:` name
    warm_start: str | None = None  # one phrase: how the base model was prepared before RL, if it was
    dataset: str | None = None
    environment: str | None = None
    rewards: Sequence[str] = ()
    training_only_rewards: Sequence[str] = ()  # rewards that are not verifiers (their reward is not reported)
    steps: int | None = None
    evaluation: Sequence[tuple[str, str]] = ()  # (label, value): scores measured with the environment's verifier


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub model id (`org/name` or `name`) rather than a local path or a builtin name."""
    if not name or name.startswith(("builtin:", ".", "/", "~")) or ":" in name or os.path.exists(name):
        return False
    return name.count("/") <= 1 and " " not in name


def base_model_label(name: str | None) -> tuple[str | None, str | None]:
    """
    `(what the card calls the base model, its Hub id or None)`. A builtin name, or a cached builtin folder, is named
    by what it is; a warm-start folder by its base model plus "warm-started"; any other local folder by its last path
    part (never a full path: it may be a cache folder of this machine).
    """
    if not name:
        return None, None
    from trl_sgcd.tooluse.models import DEPRECATED_MODEL_NAMES

    name = DEPRECATED_MODEL_NAMES.get(name, name)
    if name in BUILTIN_BASE_MODELS:
        return BUILTIN_BASE_MODELS[name]
    if is_hub_id(name):
        return name, name
    folder = os.path.expanduser(name)
    builtin = _builtin_of_folder(folder)
    if builtin is not None:
        return BUILTIN_BASE_MODELS[builtin]
    warm = _read_json(os.path.join(folder, "trl_sgcd_warm_start.json"))
    if warm and warm.get("settings", {}).get("model") in _WARM_START_MODELS:
        label, hub_id = BUILTIN_BASE_MODELS[_WARM_START_MODELS[warm["settings"]["model"]]]
        return f"{label}, warm-started with SFT", hub_id
    return f"{os.path.basename(os.path.normpath(folder)) or name} (a local model folder)", None


def _builtin_of_folder(folder: str) -> str | None:
    marker = _read_json(os.path.join(folder, "trl_sgcd_model.json"))
    return _MARKER_KINDS.get(marker.get("kind")) if marker else None


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_title(args, model_name: str | None = None) -> str:
    """The card's title: `hub_model_id`'s last part, else `run_name`, else `model_name`, else the output folder's name."""
    if getattr(args, "hub_model_id", None):
        return args.hub_model_id.split("/")[-1]
    run_name = getattr(args, "run_name", None)
    if run_name and run_name != args.output_dir:  # older transformers default run_name to output_dir
        return run_name
    return model_name or os.path.basename(os.path.normpath(args.output_dir))


def final_metrics(log_history: list[dict], prefix: str = "sgcd/", *, with_reward: bool = True) -> dict[str, float]:
    """The last logged value of every metric under `prefix`, the loss, and (`with_reward`) the training reward, from
    `trainer.state.log_history`."""
    keep = ("reward", "loss") if with_reward else ("loss",)
    last = {}
    for entry in log_history:
        for key, value in entry.items():
            if (key.startswith(prefix) or key in keep) and isinstance(value, (int, float)):
                last[key] = value
    return dict(sorted(last.items()))


def _settings_rows(args) -> list[str]:
    off = getattr(args, "credit_mode", None) == "off"
    dynamic = bool(getattr(args, "credit_dynamic_sampling", False))
    rows = []
    for label, name in CREDIT_SETTINGS + GRPO_SETTINGS:
        value = getattr(args, name, None)
        if value is None or (off and name in _CREDIT_ONLY) or (not dynamic and name in _DYNAMIC_ONLY):
            continue
        if name == "credit_reference_model" and getattr(args, "credit_reference_backend", None) == "contrast":
            continue
        rows.append(f"| {label} | `{value}` |")
    return rows


def _run_rows(facts: RunFacts, base_label: str | None) -> list[str]:
    rewards = [f"`{r}`" + (" (training-only)" if r in facts.training_only_rewards else "") for r in facts.rewards]
    rows = (
        ("Base model", base_label),
        ("Warm start", facts.warm_start),
        ("Dataset", f"`{facts.dataset}`" if facts.dataset else None),
        ("Environment", f"`{facts.environment}`" if facts.environment else None),
        ("Reward", ", ".join(rewards) or None),
        ("Training steps", None if facts.steps is None else str(facts.steps)),
    )
    return [f"| {label} | {value} |" for label, value in rows if value]


def render_model_card(args, *, model_name: str, facts: RunFacts, log_history: list[dict]) -> str:
    """The card's markdown (YAML front matter included) for an [`SGCDConfig`], what is known of the run, and a
    finished run's log history."""
    base_label, hub_id = base_model_label(facts.base_model)
    front = ["---", "library_name: transformers", "tags:", *(f"- {t}" for t in ("trl", "sgcd", "grpo", "tool-use"))]
    if hub_id:
        front.append(f"base_model: {hub_id}")
    if facts.dataset and is_hub_id(facts.dataset):
        front += ["datasets:", f"- {facts.dataset}"]
    front.append("---")
    if hub_id:
        origin = f"[{base_label}](https://huggingface.co/{hub_id})"
    else:
        origin = f"`{base_label}`" if base_label else "a language model"
    lines = [
        *front,
        "",
        f"# Model card for {model_name}",
        "",
        f"This model is a fine-tuned version of {origin}"
        + (f" on `{facts.dataset}`" if facts.dataset else "")
        + f", trained with trl-sgcd (SGCD, [{PAPER_TITLE}](https://huggingface.co/papers/{PAPER_ID})) on top of "
        "[TRL](https://github.com/huggingface/trl)'s `GRPOTrainer`.",
        "",
    ]
    run_rows = _run_rows(facts, base_label)
    if run_rows:
        lines += ["## Run", "", "| | |", "| --- | --- |", *run_rows, ""]
    if facts.evaluation:
        lines += ["## Evaluation", "", "| Metric | Value |", "| --- | --- |"]
        lines += [f"| {label} | {value} |" for label, value in facts.evaluation]
        lines.append("")
    lines += [
        "## Training procedure",
        "",
        "SGCD redistributes each rollout's verified GRPO advantage over its tokens with bounded, detached weights "
        "W = clip(1 + gamma * s, 1, c); policy gradient stays the only update.",
        "",
        "| Setting | Value |",
        "| --- | --- |",
        *_settings_rows(args),
        "",
        "### Final metrics",
        "",
    ]
    metrics = final_metrics(log_history, with_reward=not facts.training_only_rewards)
    if metrics:
        lines += ["| Metric | Last logged value |", "| --- | --- |"]
        lines += [f"| `{key}` | {value:.4g} |" for key, value in metrics.items()]
    else:
        lines.append("No metrics were logged.")
    if facts.training_only_rewards:
        lines += [
            "",
            f"The training reward is not reported: it includes the training-only "
            f"{', '.join(f'`{r}`' for r in facts.training_only_rewards)}, which is not a measure of the model. Score "
            "the model with `trl-sgcd eval`, which uses the environment's verifier.",
        ]
    lines += ["", "### Framework versions", ""]
    lines += [f"- {name}: {_version(name)}" for name in ("trl-sgcd", "trl", "transformers", "torch", "datasets")]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _name(obj) -> str | None:
    return getattr(obj, "__name__", None) or getattr(getattr(obj, "func", None), "__name__", None)


def trainer_facts(trainer, *, dataset_name: str | None = None, steps: int | None = None) -> RunFacts:
    """
    The [`RunFacts`] a trainer knows: the base model it was given (`base_model_name`), its reward functions (a
    training-only one is marked by an `eval_reward` attribute, `trl_sgcd.tooluse.evaluation.evaluation_reward`), its
    environment, its optimizer steps, and `dataset_name` (else the trainer's `model_card_dataset_name`, which
    `trl-sgcd train` sets).
    """
    base = getattr(trainer, "base_model_name", None) or getattr(trainer.model.config, "_name_or_path", None)
    funcs = list(getattr(trainer, "reward_funcs", None) or [])
    names = list(getattr(trainer, "reward_func_names", None) or [_name(f) or type(f).__name__ for f in funcs])
    training_only = [n for f, n in zip(funcs, names) if getattr(f, "eval_reward", f) is not f]
    factories = getattr(trainer, "environment_factories", None) or {}
    environments = [n for n in (_name(f) for f in factories.values()) if n]
    return RunFacts(
        base_model=base,
        dataset=dataset_name or getattr(trainer, "model_card_dataset_name", None),
        environment=", ".join(environments) or None,
        rewards=names,
        training_only_rewards=training_only,
        steps=trainer.state.global_step if steps is None else steps,
    )


def write_model_card(
    trainer,
    model_name: str | None = None,
    dataset_name: str | None = None,
    *,
    output_dir: str | None = None,
    facts: RunFacts | None = None,
) -> str | None:
    """
    Write `README.md` into `output_dir` (default `trainer.args.output_dir`), on the main process only. Returns its
    path, or `None` elsewhere.

    `facts` (default [`trainer_facts`]) says what the card reports beyond the config and the log; `model_name` is a
    fallback title (TRL passes the output folder's name), used when neither `hub_model_id` nor `run_name` is set.
    """
    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    facts = facts or trainer_facts(trainer, dataset_name=dataset_name)
    text = render_model_card(
        args, model_name=run_title(args, model_name), facts=facts, log_history=trainer.state.log_history
    )
    folder = output_dir or args.output_dir
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


class ModelCardCallback(TrainerCallback):
    """Writes the model card when training ends (every run, whether or not checkpoints were saved), and into each
    saved `checkpoint-<step>` folder (a loadable model a user may push on its own)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            write_model_card(self.trainer, output_dir=folder)

    def on_train_end(self, args, state, control, **kwargs):
        write_model_card(self.trainer)
