"""Teacher inputs: the task prompt with the credit reference inserted, followed by the student's exact completion ids.

The teacher is the current policy scored on a different prefix. Its input is built by *splicing ids*, never by
re-rendering the conversation: teacher input = tokenized teacher prompt + the very completion ids the student
sampled (tool observations included), so the completion slice of both inputs is identical token for token. The
reference is capped on its own (`cap_reference`); the task prompt is never truncated to make room for it.

Pure functions only; the trainer supplies the tokenizer and TRL's own prompt renderer.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence

import torch

REFERENCE_HEADER = (
    "<credit_reference>\n"
    "Training-only notes distilled from sibling attempts at this same task (not visible at deployment):\n"
)
REFERENCE_FOOTER = "\n</credit_reference>"


def reference_block(reference_text: str) -> str:
    """The text inserted into the teacher prompt around a (capped) reference."""
    return f"{REFERENCE_HEADER}{reference_text.strip()}{REFERENCE_FOOTER}"


def insert_reference(prompt, reference_text: str):
    """Return a copy of `prompt` with the reference block appended to the last user turn.

    Appending to the last user message works with every chat template (some reject a system message in the middle
    of a conversation). For a plain-text prompt the block goes before the task text, so the completion still
    continues the original prompt's last characters.

    Args:
        prompt (`list[dict]` or `str`):
            Conversational prompt (list of messages) or plain text.
        reference_text (`str`):
            The credit reference, already capped.
    """
    block = reference_block(reference_text)
    if isinstance(prompt, str):
        return f"{block}\n\n{prompt}"
    messages = [dict(m) for m in prompt]
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            content = messages[i].get("content")
            if isinstance(content, list):  # content blocks (multimodal)
                messages[i]["content"] = [*content, {"type": "text", "text": "\n\n" + block}]
            else:
                messages[i]["content"] = f"{content or ''}\n\n{block}"
            return messages
    # No user turn: add one at the end (before generation).
    return [*messages, {"role": "user", "content": block}]


def splice_teacher_inputs(
    teacher_prompt_ids: Sequence[Sequence[int]],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad the teacher prompts and append the student's completion ids unchanged (TRL's layout).

    Args:
        teacher_prompt_ids (`list[list[int]]`):
            One tokenized teacher prompt per row.
        completion_ids (`torch.Tensor` of shape `(B, T)`):
            The student's right-padded completion ids.
        completion_mask (`torch.Tensor` of shape `(B, T)`):
            Its attention mask.
        pad_token_id (`int`):
            Id used for left padding.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `input_ids` and `attention_mask` of shape `(B, P_teacher + T)`, whose
        last `T` columns are exactly `completion_ids` / `completion_mask`.
    """
    if len(teacher_prompt_ids) != completion_ids.size(0):
        raise ValueError(
            f"teacher_prompt_ids has {len(teacher_prompt_ids)} rows but completion_ids has {completion_ids.size(0)}."
        )
    device = completion_ids.device
    width = max((len(ids) for ids in teacher_prompt_ids), default=0)
    prompt = torch.full((len(teacher_prompt_ids), width), pad_token_id, dtype=completion_ids.dtype, device=device)
    prompt_mask = torch.zeros((len(teacher_prompt_ids), width), dtype=completion_mask.dtype, device=device)
    for row, ids in enumerate(teacher_prompt_ids):
        if len(ids):
            prompt[row, width - len(ids) :] = torch.as_tensor(list(ids), dtype=completion_ids.dtype, device=device)
            prompt_mask[row, width - len(ids) :] = 1
    input_ids = torch.cat([prompt, completion_ids], dim=1)  # (B, P_t + T)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, P_t + T)
    return input_ids, attention_mask


def teacher_prompt_ids(prompts, texts: dict[int, str], student_prompt_ids: list[list[int]], *, render, tokenizer):
    """Tokenized teacher prompts for the rows in `texts` (row -> capped reference), in the order of `texts`.

    `render(prompts) -> list[list[int]]` must be the renderer that produced the student's prompt ids (the trainer
    passes TRL's own). The unchanged prompts are rendered too: where they reproduce the student's ids, the teacher
    prompt is the rendering with the reference inserted; where they do not (a custom `rollout_func` rendered the
    prompt itself), the reference block is put in front of the student's ids at token level instead.

    Returns:
        `tuple[list[list[int]], int]`: teacher prompt ids per row, and how many rows used the token-level fallback.
    """
    rows = list(texts)
    rendered = render([insert_reference(p, texts[i]) if i in texts else p for i, p in enumerate(prompts)])
    # Render every prompt, then pick the rows: TRL's renderer pairs prompts with per-row state (one environment per
    # local row, zipped strictly), so rendering a subset of the rows would fail.
    plain_all = render(list(prompts))
    plain = [plain_all[i] for i in rows]
    out, fallback = [], 0
    for k, i in enumerate(rows):
        if list(plain[k]) == list(student_prompt_ids[k]):
            out.append(list(rendered[i]))
        else:
            fallback += 1
            block = tokenizer(reference_block(texts[i]) + "\n\n", add_special_tokens=False)["input_ids"]
            out.append(list(block) + list(student_prompt_ids[k]))
    return out, fallback


def unpad_left(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Rows of a left-padded `(B, P)` tensor as lists without the padding."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


_EDGES = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def literal_pattern(literal: str) -> re.Pattern:
    """A literal as a whole value: case-insensitive, never inside a longer alphanumeric run ("258" is not in "12580").

    The same boundary rule as the sanitizer's private values (`trl_sgcd.credit.reference.sanitize.Sanitizer`).
    """
    return re.compile(r"(?i)(?<![A-Za-z0-9])" + re.escape(literal) + r"(?![A-Za-z0-9])")


def literal_token_mask(
    completion_ids: torch.Tensor,
    literals_per_row: Sequence[Sequence[str]],
    tokenizer,
    *,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    tool_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mark the completion tokens of masked literals that the student could not have seen (paper Appendix B).

    A masked literal (a private value, a secret, a gold answer, ...) can be in the teacher's context; where the student
    cannot recover it, a divergence spike on its tokens would reward guessing a leaked value, so those tokens get zero
    saliency (W = 1). A literal the student does see is a value it may copy, often a decisive tool-call argument (the
    reservation id of the request, an airport of a looked-up reservation), and stays eligible:

    * a literal that occurs in the row's own (clean, deployment) prompt is never masked;
    * an occurrence after the literal appeared in a tool observation of the same completion (`tool_mask == 0`) is
      not masked: the environment showed it to the policy.

    Occurrences are whole values (`literal_pattern`: case-insensitive, not inside a longer run of letters or digits),
    a literal's leading and trailing punctuation stripped (`$258` is the value `258`).
    Tokens are decoded one by one and their texts concatenated, so each token gets a character span; every token
    whose span overlaps a masked occurrence is marked.

    Args:
        completion_ids (`torch.Tensor` of shape `(B, T)`):
            Completion ids.
        literals_per_row (`list[list[str]]`):
            The literals masked in each row's evidence.
        tokenizer:
            The policy tokenizer.
        prompt_ids (`list[list[int]]`, *optional*):
            Each row's student prompt ids, unpadded. `None`: no literal counts as visible in the prompt.
        tool_mask (`torch.Tensor` of shape `(B, T)`, *optional*):
            TRL's tool mask (0 on tool-observation tokens). `None`: no observation counts as seen.

    Returns:
        `torch.Tensor` of shape `(B, T)`, bool.
    """
    if prompt_ids is not None and len(prompt_ids) != len(literals_per_row):
        raise ValueError(f"prompt_ids has {len(prompt_ids)} rows but literals_per_row has {len(literals_per_row)}.")
    mask = torch.zeros(completion_ids.shape, dtype=torch.bool)
    for row, literals in enumerate(literals_per_row):
        # A value is its alphanumeric core: "$258" and "'258'" are the value 258 (seen when 258 was seen).
        literals = sorted({core for lit in literals if (core := _EDGES.sub("", lit or ""))}, key=len, reverse=True)
        if literals and prompt_ids is not None:
            prompt = tokenizer.decode(list(prompt_ids[row]))
            literals = [lit for lit in literals if not literal_pattern(lit).search(prompt)]
        if not literals:
            continue
        pieces = [tokenizer.decode([tok]) for tok in completion_ids[row].tolist()]
        ends = list(itertools.accumulate(len(piece) for piece in pieces))
        starts = [end - len(piece) for end, piece in zip(ends, pieces)]
        observation = [False] * len(pieces) if tool_mask is None else (tool_mask[row] == 0).tolist()
        text = "".join(pieces)
        for literal in literals:
            seen = False
            for hit in literal_pattern(literal).finditer(text):
                tokens = range(bisect.bisect_right(ends, hit.start()), bisect.bisect_left(starts, hit.end()))
                if tokens and all(observation[j] for j in tokens):
                    seen = True  # shown by the environment: later copies are recoverable
                elif not seen:
                    mask[row, tokens.start : tokens.stop] = True
    return mask.to(completion_ids.device)
