"""The credit table: per rollout, its prompt, its group's reference and where its credit went; logged to W&B and saved
as local HTML pages.

The rows are pure ([`credit_table_rows`] turns lists into one dict per rollout with the keys `COLUMNS`;
[`decode_token_strings`] gives token strings whose concatenation is the decoded text); the HTML is
`trl_sgcd.credit.report.html`. [`log_credit_table`] and [`save_credit_html`] are the only functions that write anything. Logging to W&B also writes
each step's rows as a local page into the run's folder (`<run.dir>/sgcd_credit_tables/step_<step>.html`): an offline
run's table shows HTML cells as "Html" only. [`CreditTableRecorder`] is the thin shell the trainer calls once per
generation batch with the tensors it has (ids, masks, weights); it keeps the first `max_groups` sibling groups (those
that received a reference first), so logging stays cheap.

W&B: one table under one key (`sgcd/credit_table`), logged with `log_mode="INCREMENTAL"`. Every call appends its rows
as a new increment: W&B keeps all increments and shows them as one table with a `step` column (and lets you step
through increments), whereas an ordinary (`IMMUTABLE`) table logged under the same key every step is a new table each
time and the run's panel shows only the latest one. One key per step would also keep every step, but makes one panel
per step. Incremental tables need a client whose `wandb.Table` takes `log_mode` (and, self-hosted, W&B Server
v0.70+); an older client, or `per_step_keys=True`, falls back to one key per step (`sgcd/credit_table/step_000012`).

Nothing here imports wandb: when no module has imported it, no run can be active, and logging is a no-op.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

from trl_sgcd.credit.report.html import CREDIT_EPS, render_weighted_html, save_credit_html, weight_color
from trl_sgcd.credit.weighting.weights import loss_mask

CREDIT_TABLE_KEY = "sgcd/credit_table"


# ------------------------------------------------------------------------------------------------------- rows
COLUMNS = (
    "step",
    "group",
    "prompt",
    "reference",
    "reference_source",
    "reward",
    "advantage",
    "credit_tokens",
    "weight_mean",
    "weight_max",
    "completion",
    "credit_html",
)


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: the last user message of a conversation (text parts joined), or the string itself."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt or [])
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    message = (users or messages or [{}])[-1]
    content = message.get("content", "") if isinstance(message, dict) else message
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def _reference_fields(reference: Any) -> tuple[str, str]:
    """(text, source) of a [`~trl_sgcd.credit.reference.builder.CreditReference`], a plain string, or `None`."""
    if reference is None:
        return "", "none"
    if isinstance(reference, str):
        return reference, "text" if reference else "none"
    return str(getattr(reference, "text", "") or ""), str(getattr(reference, "source", "none") or "none")


def _floats(values: Any) -> list[float]:
    values = values.tolist() if hasattr(values, "tolist") else values
    return [float(v) for v in values]


def credit_table_rows(
    *,
    step: int,
    prompts: Sequence[Any],
    completion_token_strs: Sequence[Sequence[str]],
    weights: Sequence[Sequence[float]],
    eligible: Sequence[Sequence[bool]],
    rewards: Sequence[float],
    advantages: Sequence[float],
    references: Sequence[Any],
    group_indices: Sequence[int],
    cap: float,
    max_rows: int | None = None,
) -> list[dict]:
    r"""
    One row per rollout: what it was asked, the reference its group got, and where its credit went.

    Args:
        step (`int`):
            Training step of the batch.
        prompts (`Sequence`):
            Prompt of each rollout: a string, or a conversation (its last user message is shown).
        completion_token_strs (`Sequence[Sequence[str]]`):
            Token strings of each completion (padding removed).
        weights (`Sequence[Sequence[float]]`):
            Credit weights of each completion; a row may be longer than its tokens (right padding), never shorter.
        eligible (`Sequence[Sequence[bool]]`):
            Credit-eligible tokens of each completion (same lengths as `weights`).
        rewards (`Sequence[float]`):
            Total reward of each rollout.
        advantages (`Sequence[float]`):
            Scalar (group-normalised) advantage of each rollout, before the credit weights.
        references (`Sequence`):
            Reference of each rollout's group: a `CreditReference` (its `text` and `source`), a string, or `None`.
        group_indices (`Sequence[int]`):
            Sibling group of each rollout.
        cap (`float`):
            Weight drawn in the strongest colour (`credit_cap`).
        max_rows (`int` or `None`, *optional*):
            Keep only the first `max_rows` rollouts.

    Returns:
        `list[dict]`: with keys `COLUMNS`. `credit_tokens` counts eligible tokens with W > 1; `weight_mean` and
        `weight_max` are over eligible tokens (1.0 when there is none); `credit_html` is [`render_weighted_html`].
    """
    n = len(prompts)
    for name, seq in (
        ("completion_token_strs", completion_token_strs),
        ("weights", weights),
        ("eligible", eligible),
        ("rewards", rewards),
        ("advantages", advantages),
        ("references", references),
        ("group_indices", group_indices),
    ):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} prompts.")
    rewards, advantages = _floats(rewards), _floats(advantages)
    rows = []
    for i in range(n if max_rows is None else min(n, max_rows)):
        tokens = list(completion_token_strs[i])
        L = len(tokens)
        w, ok = _floats(weights[i]), [bool(e) for e in _floats(eligible[i])]
        if len(w) < L or len(ok) < L:
            raise ValueError(f"row {i}: {L} tokens but {len(w)} weights and {len(ok)} eligibility flags.")
        w, ok = w[:L], ok[:L]
        credited = [x for x, e in zip(w, ok) if e]
        ref_text, ref_source = _reference_fields(references[i])
        rows.append(
            {
                "step": int(step),
                "group": int(group_indices[i]),
                "prompt": prompt_text(prompts[i]),
                "reference": ref_text,
                "reference_source": ref_source,
                "reward": rewards[i],
                "advantage": advantages[i],
                "credit_tokens": sum(x > 1.0 + CREDIT_EPS for x in credited),
                "weight_mean": sum(credited) / len(credited) if credited else 1.0,
                "weight_max": max(credited) if credited else 1.0,
                "completion": "".join(tokens),
                "credit_html": render_weighted_html(tokens, w, ok, cap=cap),
            }
        )
    return rows


def decode_token_strings(tokenizer, ids: Sequence[int], *, context: int = 4) -> list[str]:
    """
    Token strings of `ids` whose concatenation is the decoded text.

    Token `i` is what decoding `ids[i-context : i+1]` adds to decoding `ids[i-context : i]`: the left context keeps
    SentencePiece's leading spaces, and a byte-level token that ends inside a multi-byte character contributes `""`
    (its character is given to the token that completes it) instead of U+FFFD.
    """
    ids = [int(i) for i in ids]
    if not ids:
        return []
    windows = [ids[max(0, i - context) : i] for i in range(len(ids))]
    kwargs = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
    before = tokenizer.batch_decode(windows, **kwargs)
    after = tokenizer.batch_decode([w + [t] for w, t in zip(windows, ids)], **kwargs)
    pieces = []
    for i, (b, a) in enumerate(zip(before, after)):
        common = len(os.path.commonprefix([b, a]))
        piece = a[common:]
        if i + 1 < len(ids) and piece.endswith("\ufffd"):
            piece = piece.rstrip("\ufffd")
        pieces.append(piece)
    return pieces


# ---------------------------------------------------------------------------------------------------- writers


def _export_html(rows: Sequence[dict], run, step: int, cap: float | None) -> str | None:
    """Write the rows as a page into the run's local files folder (`<run.dir>/sgcd_credit_tables/`), or `None`."""
    folder = getattr(run, "dir", None)
    if not folder:
        return None
    path = os.path.join(folder, "sgcd_credit_tables", f"step_{int(step):06d}.html")
    return save_credit_html(rows, path, title=f"SGCD credit table, step {step}", cap=cap)


def _active_wandb():
    """The wandb module when a run is active, else `None`. Never imports wandb: without the module, no run exists."""
    wandb = sys.modules.get("wandb")
    return wandb if wandb is not None and getattr(wandb, "run", None) is not None else None


# key -> (run, incremental table). One table object per key and run: a fresh INCREMENTAL table under the same key
# would restart at increment 0 and hide the earlier ones.
_INCREMENTAL_TABLES: dict[str, tuple[Any, Any]] = {}


def _supports_incremental(wandb) -> bool:
    return "log_mode" in inspect.signature(wandb.Table.__init__).parameters


def log_credit_table(
    rows: Sequence[dict],
    *,
    step: int,
    key: str = CREDIT_TABLE_KEY,
    per_step_keys: bool = False,
    html_export: bool = True,
    cap: float | None = None,
) -> bool:
    """
    Append `rows` to the W&B credit table of the active run; a no-op when wandb is absent or no run is active.

    Args:
        rows (`Sequence[dict]`):
            Rows from [`credit_table_rows`]; `credit_html` becomes a `wandb.Html` cell.
        step (`int`):
            Training step; logged as `train/global_step`, the step metric `transformers`' `WandbCallback` uses.
        key (`str`, *optional*, defaults to `"sgcd/credit_table"`):
            Table key.
        per_step_keys (`bool`, *optional*, defaults to `False`):
            Log an ordinary table under `f"{key}/step_{step:06d}"` instead of appending to the incremental table
            (for W&B servers older than v0.70). Used automatically when the client has no incremental tables.
        html_export (`bool`, *optional*, defaults to `True`):
            Also write the rows as a standalone page into the run's local folder,
            `<run.dir>/sgcd_credit_tables/step_<step>.html` (for offline runs, `wandb/offline-run-*/files/...`), so
            the shaded tokens can be read without syncing: an offline run's table shows its HTML cells only as
            "Html" placeholders.
        cap (`float`, *optional*):
            `credit_cap`, for the page's colour legend.

    Returns:
        `bool`: whether anything was logged.
    """
    wandb = _active_wandb()
    if wandb is None or not rows:
        return False
    run = wandb.run
    incremental = not per_step_keys and _supports_incremental(wandb)
    if incremental:
        held_run, table = _INCREMENTAL_TABLES.get(key, (None, None))
        if held_run is not run:
            table = wandb.Table(columns=list(COLUMNS), log_mode="INCREMENTAL")
            _INCREMENTAL_TABLES[key] = (run, table)
        log_key = key
    else:
        table = wandb.Table(columns=list(COLUMNS))
        log_key = f"{key}/step_{int(step):06d}"
    for row in rows:
        table.add_data(*[wandb.Html(row[c], inject=False) if c == "credit_html" else row[c] for c in COLUMNS])
    run.log({log_key: table, "train/global_step": int(step)})
    if html_export:
        _export_html(rows, run, step, cap)
    if incremental:
        # An INCREMENTAL table serialises only the rows added since its last log (`data[_last_logged_idx + 1:]`),
        # so rows already logged are never read again: drop their contents, or a long run would hold every
        # step's HTML in memory. The row count (and so the next increment's offset) is unchanged.
        for logged in table.data:
            logged[:] = [None] * len(logged)
    return True


# ---------------------------------------------------------------------------------------------------- the recorder


class CreditTableRecorder:
    """
    Builds the credit table of one generation batch from the trainer's tensors, and logs it.

    Args:
        tokenizer:
            Tokenizer that turns completion ids into token strings.
        cap (`float`):
            `credit_cap` (the strongest shade).
        num_generations (`int`):
            Rollouts per prompt: row `r` of the global batch is in group `r // num_generations`.
        max_groups (`int`, *optional*, defaults to `2`):
            Groups kept per batch; groups that received a reference come first, then the others, in batch order.
        key (`str`, *optional*, defaults to `"sgcd/credit_table"`):
            W&B table key.
        log_to_wandb (`bool`, *optional*, defaults to `True`):
            Log to the active W&B run (if any). The trainer builds the recorder only when `report_to` has `wandb`.
        html_dir (`str` or `None`, *optional*):
            Also write `credit_{step:05d}.html` there each batch.
    """

    def __init__(
        self,
        tokenizer,
        *,
        cap: float,
        num_generations: int,
        max_groups: int = 2,
        key: str = CREDIT_TABLE_KEY,
        log_to_wandb: bool = True,
        html_dir: str | None = None,
    ):
        if max_groups < 1:
            raise ValueError(f"max_groups={max_groups!r} must be >= 1.")
        weight_color(1.0, cap=cap)  # validates cap
        self.tokenizer, self.cap, self.num_generations = tokenizer, float(cap), int(num_generations)
        self.max_groups, self.key, self.log_to_wandb, self.html_dir = max_groups, key, log_to_wandb, html_dir
        self.last_rows: list[dict] = []

    def select_rows(self, group_indices: Sequence[int], references: Sequence[Any]) -> list[int]:
        """Local rows of the first `max_groups` groups, groups with a non-empty reference first."""
        order: list[int] = list(dict.fromkeys(group_indices))
        credited = {g for g, ref in zip(group_indices, references) if _reference_fields(ref)[0]}
        keep = set(([g for g in order if g in credited] + [g for g in order if g not in credited])[: self.max_groups])
        return [i for i, g in enumerate(group_indices) if g in keep]

    def record(
        self,
        *,
        step: int,
        prompts: Sequence[Any],
        completion_ids,
        completion_mask,
        weights,
        rewards: Sequence[float],
        advantages: Sequence[float],
        references: Sequence[Any],
        row_offset: int = 0,
        tool_mask=None,
        eligible=None,
    ) -> list[dict]:
        """
        Rows of this batch's selected groups; logged to W&B and/or written as HTML as configured.

        Args:
            step (`int`): training step.
            prompts (`Sequence`): local prompts `(B,)`.
            completion_ids (`torch.Tensor` of shape `(B, T)`): right-padded completion ids.
            completion_mask (`torch.Tensor` of shape `(B, T)`): 1 on completion tokens.
            weights (`torch.Tensor` of shape `(B, T)`): credit weights W.
            rewards (`Sequence[float]`): local total rewards `(B,)`.
            advantages (`Sequence[float]`): local scalar advantages `(B,)`, before the credit weights.
            references (`Sequence`): local row -> its group's reference (or `None`).
            row_offset (`int`, *optional*, defaults to `0`): global index of local row 0.
            tool_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 0 on tool-observation tokens.
            eligible (`torch.Tensor` of shape `(B, T)`, *optional*): credit-eligible tokens; defaults to
                the loss mask (`completion_mask * tool_mask`, [`~trl_sgcd.credit.weighting.weights.loss_mask`]).
        """
        B = len(prompts)
        groups = [(row_offset + i) // self.num_generations for i in range(B)]
        keep = self.select_rows(groups, references)
        completion_mask = completion_mask.detach().cpu().bool()  # (B, T)
        if eligible is None:
            eligible = loss_mask(completion_mask, None if tool_mask is None else tool_mask.detach().cpu())
        eligible = eligible.detach().cpu().bool()  # (B, T)
        ids, weights = completion_ids.detach().cpu(), weights.detach().cpu().float()  # (B, T)
        rewards, advantages = _floats(rewards), _floats(advantages)
        tokens = []
        for i in keep:
            tokens.append(
                decode_token_strings(self.tokenizer, ids[i, : self._length(ids[i], completion_mask[i])].tolist())
            )
        rows = credit_table_rows(
            step=step,
            prompts=[prompts[i] for i in keep],
            completion_token_strs=tokens,
            weights=[weights[i] for i in keep],
            eligible=[eligible[i] for i in keep],
            rewards=[rewards[i] for i in keep],
            advantages=[advantages[i] for i in keep],
            references=[references[i] for i in keep],
            group_indices=[groups[i] for i in keep],
            cap=self.cap,
        )
        if self.log_to_wandb:
            log_credit_table(rows, step=step, key=self.key, cap=self.cap)
        if self.html_dir is not None:
            save_credit_html(
                rows,
                os.path.join(self.html_dir, f"credit_{int(step):05d}.html"),
                cap=self.cap,
                title=f"SGCD credit table, step {step}",
            )
        self.last_rows = rows
        return rows

    def _length(self, ids, mask) -> int:
        """Tokens of a right-padded completion: up to its last masked-in token (tool tokens included) or, for a
        row masked out entirely (`mask_truncated_completions`), up to its right padding."""
        on = mask.nonzero()  # (n, 1)
        if len(on):
            return int(on[-1]) + 1
        pad, length = getattr(self.tokenizer, "pad_token_id", None), len(ids)
        while pad is not None and length and int(ids[length - 1]) == pad:
            length -= 1
        return length


__all__ = [
    "COLUMNS",
    "CREDIT_TABLE_KEY",
    "CreditTableRecorder",
    "credit_table_rows",
    "decode_token_strings",
    "log_credit_table",
    "prompt_text",
]
