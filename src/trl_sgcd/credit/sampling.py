"""Dynamic sampling: when too few groups of a generation batch are mixed, generate more and keep mixed groups first.

Mixed sibling groups are SGCD's evidence (paper §4.2). When a batch has fewer than `credit_min_mixed_fraction`
mixed groups, the trainer generates extra rounds (at most `credit_max_resample_rounds`) from a separate sampler and
fills each rank's batch with its mixed groups first, so the batch size TRL expects never changes. Groups must not span
ranks (each rank's local generation batch must hold whole groups); otherwise dynamic sampling is switched off with a
warning.

Pure functions over TRL's generation output dicts.
"""

from __future__ import annotations

import torch

# Keys of GRPOTrainer's generation output, by how their rows are padded when rows of several rounds are merged.
_LEFT_PADDED = {"prompt_ids": "pad", "prompt_mask": 0}
_RIGHT_PADDED = {
    "completion_ids": "pad",
    "completion_mask": 0,
    "tool_mask": 1,  # TRL pads tool_mask with 1
    "old_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "importance_sampling_ratio": 1.0,
}
_PER_ROW = {"advantages"}
_RECOMPUTED = {"num_items_in_batch"}


def select_groups(mixed_per_round: list[list[bool]], num_groups: int) -> list[tuple[int, int]]:
    """Pick `num_groups` local groups from several rounds: mixed ones first (earliest round first), then the first
    round's non-mixed ones in order, then later rounds' non-mixed ones.

    Args:
        mixed_per_round (`list[list[bool]]`):
            For each round, whether each local group is mixed.
        num_groups (`int`):
            How many groups the batch holds.

    Returns:
        `list[tuple[int, int]]`: `(round, local_group)` pairs, in batch order.
    """
    mixed = [(r, g) for r, flags in enumerate(mixed_per_round) for g, m in enumerate(flags) if m]
    rest = [(r, g) for r, flags in enumerate(mixed_per_round) for g, m in enumerate(flags) if not m]
    chosen = (mixed + rest)[:num_groups]
    if len(chosen) < num_groups:
        raise ValueError(f"need {num_groups} groups, only {len(chosen)} were generated")
    return chosen


def _pad_rows(tensors: list[torch.Tensor], value, side: str) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    padded = []
    for t in tensors:
        fill = torch.full((t.size(0), width - t.size(1), *t.shape[2:]), value, dtype=t.dtype, device=t.device)
        padded.append(torch.cat([fill, t] if side == "left" else [t, fill], dim=1))
    return torch.cat(padded, dim=0)


def merge_outputs(outputs: list[dict], rows: list[list[int]], *, pad_token_id: int) -> dict:
    """Rows `rows[r]` of each round's output, concatenated in round order and re-padded to common widths.

    Args:
        outputs (`list[dict]`):
            GRPOTrainer generation outputs (one per round) of this rank.
        rows (`list[list[int]]`):
            Local row indices to keep from each round.
        pad_token_id (`int`):
            Pad id for prompt (left) and completion (right) ids.

    Returns:
        `dict`: an output with the same keys; `num_items_in_batch` is left for the caller to recompute.
    """
    merged = {}
    for key in outputs[0]:
        if key in _RECOMPUTED:
            continue
        parts = [out[key][idx] for out, idx in zip(outputs, rows) if idx]
        if key in _PER_ROW:
            merged[key] = torch.cat(parts, dim=0)
        elif key in _LEFT_PADDED or key in _RIGHT_PADDED:
            fill = {**_LEFT_PADDED, **_RIGHT_PADDED}[key]
            fill = pad_token_id if fill == "pad" else fill
            if parts[0].dim() == 2 and key == "importance_sampling_ratio" and parts[0].size(1) == 1:
                merged[key] = torch.cat(parts, dim=0)  # sequence-level ratio (B, 1)
            else:
                merged[key] = _pad_rows(parts, fill, "left" if key in _LEFT_PADDED else "right")
        else:
            raise ValueError(
                f"dynamic sampling cannot merge the generation output key {key!r} (multimodal inputs are not "
                "supported); set credit_dynamic_sampling=False."
            )
    return merged


def merge_batches(batches: list[dict], rows: list[list[int]], rewards_per_round: list[torch.Tensor]) -> dict:
    """The credit-side batch (inputs, prompts, completions) for the kept rows, plus their local rewards."""
    merged = {"inputs": [], "prompts": [], "completions": []}
    for batch, idx in zip(batches, rows):
        for key in merged:
            merged[key].extend(batch[key][i] for i in idx)
    # The kept rows' completions of every rank, in rank order (the trainer gathers them again after merging).
    merged["all_completions"] = None
    merged["local_rewards_per_func"] = torch.cat(
        [rewards[idx] for rewards, idx in zip(rewards_per_round, rows) if idx], dim=0
    )
    return merged


def resample_sampler(*, num_generations: int, generation_batch_size: int, seed: int):
    """`sampler_fn` for the extra rounds: TRL's RepeatSampler (groups of G), one pass, its own seed."""
    from trl.trainer.utils import RepeatSampler

    def make(dataset):
        return RepeatSampler(
            data_source=dataset,
            mini_repeat_count=num_generations,
            batch_size=generation_batch_size // num_generations,
            repeat_count=1,
            shuffle=True,
            seed=seed,
        )

    return make
