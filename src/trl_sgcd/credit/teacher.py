"""Teacher inputs: the task prompt with the credit reference inserted, followed by the student's exact completion ids.

The teacher is the current policy scored on a different prefix. Its input is built by *splicing ids*, never by
re-rendering the conversation: teacher input = tokenized teacher prompt + the very completion ids the student
sampled (tool observations included), so the completion slice of both inputs is identical token for token. The
reference is capped on its own (`cap_reference`); the task prompt is never truncated to make room for it.

Pure functions only; the trainer supplies the tokenizer and TRL's own prompt renderer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trl_sgcd.credit.reference import cap_reference  # noqa: F401 - the one reference cap, re-exported for the trainer

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


def literal_token_mask(
    completion_ids: torch.Tensor, literals_per_row: Sequence[Sequence[str]], tokenizer
) -> torch.Tensor:
    """Mark completion tokens that overlap a masked literal (a secret, a card number, a gold answer, ...).

    Tokens are decoded one by one and their texts concatenated, so each token gets a character span; every token
    whose span overlaps an occurrence of a literal is marked. Such tokens get zero saliency (W = 1).

    Args:
        completion_ids (`torch.Tensor` of shape `(B, T)`):
            Completion ids.
        literals_per_row (`list[list[str]]`):
            The literals masked in each row's evidence.
        tokenizer:
            The policy tokenizer.

    Returns:
        `torch.Tensor` of shape `(B, T)`, bool.
    """
    mask = torch.zeros(completion_ids.shape, dtype=torch.bool)
    for row, literals in enumerate(literals_per_row):
        literals = sorted({lit for lit in literals if lit and lit.strip()}, key=len, reverse=True)
        if not literals:
            continue
        pieces = [tokenizer.decode([tok]) for tok in completion_ids[row].tolist()]
        starts, pos = [], 0
        for piece in pieces:
            starts.append(pos)
            pos += len(piece)
        text = "".join(pieces)
        lowered = text.lower()
        for literal in literals:
            needle, begin = literal.lower(), 0
            while (hit := lowered.find(needle, begin)) != -1:
                end = hit + len(needle)
                for j, start in enumerate(starts):
                    if start < end and start + len(pieces[j]) > hit:
                        mask[row, j] = True
                begin = hit + 1
    return mask.to(completion_ids.device)


def sibling_context_reference(group, *, private_columns, observation_max_chars: int):
    """Teacher context for the `no_reference` and `sdpo` modes: one raw successful sibling, sanitized, no LLM.

    The shortest successful trace is used (ties: lowest row index), so the choice is deterministic.
    """
    from trl_sgcd.credit.evidence import render_sanitized_trace
    from trl_sgcd.credit.reference import CreditReference
    from trl_sgcd.credit.sanitize import Sanitizer, private_values

    successes = [r for r, ok in zip(group.rollouts, group.success) if ok]
    if not successes:
        return CreditReference(text="", sections={}, masked_literals=[], source="none", group_index=group.group_index)
    sanitizer = Sanitizer([private_values(r.row, private_columns) for r in group.rollouts])
    # Sanitize each step before truncating it, so a secret cut in half by the truncation cannot leak.
    traces = [
        (
            render_sanitized_trace(r.completion, sanitizer=sanitizer, max_observation_chars=observation_max_chars),
            r.index,
        )
        for r in successes
    ]
    clean, _ = min(traces, key=lambda t: (len(t[0].text), t[1]))
    return CreditReference(
        text="A successful attempt at this same task:\n" + clean.text,
        sections={},
        masked_literals=list(clean.masked),
        source="sibling",
        group_index=group.group_index,
    )
