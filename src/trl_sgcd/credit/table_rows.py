"""The rows of the credit table: per rollout, its prompt, its group's reference and where its credit went. Pure.

[`credit_table_rows`] turns lists (token strings, weights, eligibility, rewards, references) into one dict per
rollout with the keys `COLUMNS`; [`decode_token_strings`] gives the token strings whose concatenation is the decoded
text. Writing the rows (W&B, HTML pages) is `trl_sgcd.credit.table`; the HTML itself is `trl_sgcd.credit.render`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from trl_sgcd.credit.render import _EPS, render_weighted_html

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
    """(text, source) of a [`~trl_sgcd.credit.reference.CreditReference`], a plain string, or `None`."""
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
                "credit_tokens": sum(x > 1.0 + _EPS for x in credited),
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


__all__ = ["COLUMNS", "credit_table_rows", "decode_token_strings", "prompt_text"]
