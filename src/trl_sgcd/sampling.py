"""Dynamic sampling (DAPO's rule, the paper's stage 1): keep mixed groups, generate more while too few are mixed.

A group is mixed when 0 < #success < G (success: total reward >= `credit_success_threshold`). The rule is the same in
every credit mode, `off` included, so a GRPO control run with `credit_dynamic_sampling=True` sees the very batches an
SGCD run sees (DAPO's dynamic sampling on GRPO), and arms differ only in what they do with them.

Per generation batch: while fewer than `credit_min_mixed_fraction` of the batch's groups (all ranks) can be filled
with mixed groups and fewer than `credit_max_resample_rounds` extra rounds were drawn, the trainer generates one more
round from a sampler of its own (its own seed, so the main data order is untouched). The batch TRL trains on then
holds the mixed groups first (earliest round first). With the default fraction 1.0 it holds only mixed groups unless
the round limit is reached; then the rest is filled with non-mixed groups, the first round's in order, then later
rounds', so the batch size TRL expects never changes. Each extra round is announced on the main process
("dynamic sampling round 1/2: 3 of 8 groups mixed"), so a batch that takes several rounds is visibly not hung. Logged
per batch: `sgcd/resample/rounds`, `sgcd/resample/mixed_fraction` (of the kept batch),
`sgcd/resample/non_mixed_filled` (non-mixed groups that filled the batch at the round limit) and
`sgcd/resample/generated_groups`.

Groups must not span ranks (each rank's local generation batch must hold whole groups) and the dataset must be
map-style; otherwise dynamic sampling is switched off with a warning.

Pure functions over TRL's generation output dicts, and [`ResampleStream`], where the extra rounds come from (its
position is saved in checkpoints, so a resumed run draws what the uninterrupted one would have).
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


def mixed_groups(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor, *, threshold: float, group_size: int):
    """Whether each local group of a round is mixed, from this rank's rewards `(n_local, F)`."""
    from trl_sgcd.credit.siblings import is_mixed, success_mask
    from trl_sgcd.credit.stats import total_rewards

    success = success_mask(total_rewards(rewards_per_func, reward_weights), threshold)
    return [is_mixed(success[g : g + group_size]) for g in range(0, len(success), group_size)]


def keep_resampling(mixed_fraction: float, rounds: int, *, min_mixed_fraction: float, max_rounds: int) -> bool:
    """Whether to draw one more round: the kept batch is less than `min_mixed_fraction` mixed and rounds remain."""
    return mixed_fraction < min_mixed_fraction and rounds < max_rounds


def resample_metrics(*, rounds: int, num_groups: int, kept_mixed: int, generated_groups: int) -> dict[str, float]:
    """The `sgcd/resample/` metrics of one batch, from global counts (all ranks)."""
    return {
        "sgcd/resample/rounds": float(rounds),
        "sgcd/resample/mixed_fraction": kept_mixed / max(num_groups, 1),
        "sgcd/resample/non_mixed_filled": float(num_groups - kept_mixed),
        "sgcd/resample/generated_groups": float(generated_groups),
    }


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


def unavailable(n_local: int, group_size: int, *, iterable: bool) -> str | None:
    """Why dynamic sampling cannot run on this batch (a warning text), or `None` when it can."""
    if n_local % group_size or iterable:
        return (
            "credit_dynamic_sampling is off for this run: it needs a map-style dataset and whole groups on each rank "
            f"(local generation batch {n_local}, num_generations={group_size})."
        )
    return None


def progress_line(round_index: int, max_rounds: int, num_mixed: int, num_groups: int) -> str:
    """The line logged before each extra round, so a long batch is visibly not hung."""
    return f"dynamic sampling round {round_index}/{max_rounds}: {num_mixed} of {num_groups} groups mixed"


def draw_rounds(
    output, batch, local: slice, next_round, global_sum, *, args, reward_weights, group_size: int, announce=None
):
    """The rounds of one generation batch under the rule of the module docstring.

    Args:
        output (`dict`), batch (`dict`): the first round (TRL's output, the trainer's credit batch).
        local (`slice`): this rank's rows of the gathered rewards.
        next_round (`Callable[[], tuple[dict, dict]]`): generates one more round (output, credit batch).
        global_sum (`Callable[[int], int]`): sums a per-rank count over the ranks (every rank calls it).
        args ([`SGCDConfig`]): `credit_success_threshold`, `credit_min_mixed_fraction`, `credit_max_resample_rounds`.
        reward_weights (`torch.Tensor` of shape `(F,)`): TRL's reward weights.
        group_size (`int`): G.
        announce (`Callable[[str], None]`, *optional*): called with [`progress_line`] before each extra round (the
            trainer passes its logger on the main process).

    Returns:
        `tuple`: the rounds' outputs, credit batches and local rewards `(n_local, F)`, the chosen `(round, group)`
        pairs, and the `sgcd/resample/` metrics.
    """
    outputs, batches, rewards, mixed = [output], [batch], [batch["rewards_per_func"][local]], []
    num_local = len(batch["prompts"]) // group_size
    num_groups = global_sum(num_local)
    while True:
        threshold = args.credit_success_threshold
        mixed.append(mixed_groups(rewards[-1], reward_weights, threshold=threshold, group_size=group_size))
        chosen = select_groups(mixed, num_local)
        kept_mixed = global_sum(sum(mixed[r][g] for r, g in chosen))
        limits = dict(min_mixed_fraction=args.credit_min_mixed_fraction, max_rounds=args.credit_max_resample_rounds)
        if not keep_resampling(kept_mixed / num_groups, len(mixed) - 1, **limits):
            break
        if announce is not None:
            announce(progress_line(len(mixed), args.credit_max_resample_rounds, kept_mixed, num_groups))
        out, new = next_round()
        outputs.append(out), batches.append(new), rewards.append(new["rewards_per_func"][local])
    metrics = resample_metrics(
        rounds=len(mixed) - 1, num_groups=num_groups, kept_mixed=kept_mixed, generated_groups=num_groups * len(mixed)
    )
    return outputs, batches, rewards, chosen, metrics


def merge_rounds(outputs, batches, local_rewards, chosen, *, group_size: int, pad_token_id: int):
    """This rank's batch from the groups `chosen` ([`select_groups`]) of several rounds: the merged TRL output
    (`num_items_in_batch` left to the caller, it is global) and the merged credit batch (`local_rewards_per_func`
    `(n_local, F)` of the kept rows; the caller gathers rewards and completions again)."""
    rows = [[] for _ in outputs]
    for r, g in chosen:
        rows[r].extend(range(g * group_size, (g + 1) * group_size))
    return merge_outputs(outputs, rows, pad_token_id=pad_token_id), merge_batches(batches, rows, local_rewards)


class ResampleStream:
    """Where extra rounds come from: epochs of a sampler of its own; the position is saved in checkpoints.

    Args:
        make_loader (`Callable[[int], Iterable]`):
            Epoch (1, 2, ...) -> a loader of generation batches (the trainer seeds it with `seed + 7919 * epoch`).
    """

    def __init__(self, make_loader):
        self.make_loader, self.epoch, self.consumed, self._iter = make_loader, 0, 0, None

    def next(self):
        """The next generation batch; after a resume, the one the uninterrupted run would have drawn.

        The global torch RNG is left untouched (a DataLoader draws its base seed from it when it starts an epoch),
        so generation samples the same tokens whether or not the stream was just rebuilt by a resume.
        """
        with torch.random.fork_rng(devices=[]):
            if self._iter is None:  # first use, or after a resume: the same epoch, the same position
                self.epoch = max(self.epoch, 1)
                self._iter = iter(self.make_loader(self.epoch))
                for _ in range(self.consumed):
                    next(self._iter)
            try:
                batch = next(self._iter)
            except StopIteration:
                self.epoch, self.consumed = self.epoch + 1, 0
                self._iter = iter(self.make_loader(self.epoch))
                batch = next(self._iter)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self._iter = int(state.get("epoch", 0)), int(state.get("consumed", 0)), None


def resample_sampler(args, *, num_generations: int, epoch: int):
    """`sampler_fn` for the extra rounds of epoch `epoch` (1, 2, ...): TRL's RepeatSampler (groups of G), one pass
    over the dataset, seeded `args.seed + 7919 * epoch` (never the main sampler's seed)."""
    seed, generation_batch_size = args.seed + 7919 * epoch, args.generation_batch_size
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
