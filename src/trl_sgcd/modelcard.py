"""The model card of an SGCD run: `README.md` in `output_dir`, written at the end of every training run.

TRL's card links `https://huggingface.co/<base model>`, which is `None` (or a cache path) for a local or builtin model,
and says nothing about the method's settings. This card names the real base model (a Hub id is linked, a local folder
or `builtin:*` name is written as is), lists the credit settings and the final `sgcd/` metrics under "Training
procedure", and cites the paper with its authors.
"""

from __future__ import annotations

import os
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


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub model id (`org/name` or `name`) rather than a local path or a builtin name."""
    if not name or name.startswith(("builtin:", ".", "/", "~")) or os.path.exists(name):
        return False
    return name.count("/") <= 1 and " " not in name


def final_metrics(log_history: list[dict], prefix: str = "sgcd/") -> dict[str, float]:
    """The last logged value of every metric under `prefix`, and of the reward, from `trainer.state.log_history`."""
    last = {}
    for entry in log_history:
        for key, value in entry.items():
            if (key.startswith(prefix) or key in ("reward", "loss")) and isinstance(value, (int, float)):
                last[key] = value
    return dict(sorted(last.items()))


def render_model_card(
    args, *, base_model: str | None, model_name: str, log_history: list[dict], dataset_name: str | None = None
) -> str:
    """The card's markdown (YAML front matter included) for an [`SGCDConfig`] and a finished run's log history."""
    front = ["---", "library_name: transformers", "tags:", *(f"- {t}" for t in ("trl", "sgcd", "grpo", "tool-use"))]
    if is_hub_id(base_model):
        front.append(f"base_model: {base_model}")
    if dataset_name and is_hub_id(dataset_name):
        front += ["datasets:", f"- {dataset_name}"]
    front.append("---")
    if is_hub_id(base_model):
        origin = f"[{base_model}](https://huggingface.co/{base_model})"
    else:
        origin = f"`{base_model}`" if base_model else "a local model"
    lines = [
        *front,
        "",
        f"# Model card for {model_name}",
        "",
        f"This model is a fine-tuned version of {origin}"
        + (f" on the `{dataset_name}` dataset" if dataset_name else "")
        + f", trained with trl-sgcd (SGCD, [{PAPER_TITLE}](https://huggingface.co/papers/{PAPER_ID})) on top of "
        "[TRL](https://github.com/huggingface/trl)'s `GRPOTrainer`.",
        "",
        "## Training procedure",
        "",
        "SGCD redistributes each rollout's verified GRPO advantage over its tokens with bounded, detached weights "
        "W = clip(1 + gamma * s, 1, c); policy gradient stays the only update.",
        "",
        "| Setting | Value |",
        "| --- | --- |",
        *(f"| {label} | `{getattr(args, name, None)}` |" for label, name in CREDIT_SETTINGS + GRPO_SETTINGS),
        "",
        "### Final metrics",
        "",
    ]
    metrics = final_metrics(log_history)
    if metrics:
        lines += ["| Metric | Last logged value |", "| --- | --- |"]
        lines += [f"| `{key}` | {value:.4g} |" for key, value in metrics.items()]
    else:
        lines.append("No metrics were logged.")
    lines += ["", "### Framework versions", ""]
    lines += [f"- {name}: {_version(name)}" for name in ("trl-sgcd", "trl", "transformers", "torch", "datasets")]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def write_model_card(trainer, model_name: str | None = None, dataset_name: str | None = None) -> str | None:
    """
    Write `README.md` into `trainer.args.output_dir` (main process only). Returns its path, or `None` elsewhere.

    The base model is the name the trainer was given (`trainer.base_model_name`, e.g. `builtin:tiny` or a Hub id),
    else the model config's `_name_or_path`.
    """
    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    base = getattr(trainer, "base_model_name", None) or getattr(trainer.model.config, "_name_or_path", None)
    name = model_name or (args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))).split("/")[-1]
    text = render_model_card(
        args, base_model=base, model_name=name, log_history=trainer.state.log_history, dataset_name=dataset_name
    )
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


class ModelCardCallback(TrainerCallback):
    """Writes the model card when training ends (every run, whether or not checkpoints were saved)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_end(self, args, state, control, **kwargs):
        write_model_card(self.trainer)
