"""Dynamic sampling in the trainer: the batch keeps mixed groups, and `off` (GRPO) draws what `sgcd` draws."""

import math
import types

import torch

from trl_sgcd import sampling


def _alternating(i, rank, rnd):
    """Round 0: nobody calls the tool (no mixed group); round 1: every other row does (all groups mixed)."""
    return rnd % 2 == 1 and i % 2 == 0


_DYNAMIC = dict(script=_alternating, credit_dynamic_sampling=True, credit_max_resample_rounds=2)


def test_dynamic_sampling_fills_the_batch_with_mixed_groups(trained):
    run = trained("dynamic_sgcd", **_DYNAMIC)
    assert math.isfinite(run.out.training_loss)
    logged = run.trainer.state.log_history[0]
    assert logged["sgcd/resample/rounds"] == 1.0 and logged["sgcd/resample/mixed_fraction"] == 1.0
    assert logged["sgcd/resample/non_mixed_filled"] == 0.0 and logged["sgcd/resample/generated_groups"] == 4.0
    assert logged["sgcd/mixed_group_fraction"] == 1.0
    output = run.apply.calls[0][2]
    assert output["completion_ids"].size(0) == run.trainer.args.per_device_train_batch_size  # batch size unchanged
    kept, width = run.rounds[1], run.rounds[1]["completion_ids"].size(1)  # the mixed round was kept (re-padded)
    assert torch.equal(output["completion_ids"][:, :width], kept["completion_ids"])
    assert not output["completion_mask"][:, width:].any()
    assert run.trainer.last_credit.stats.sums["credit_tokens"] > 0


def test_grpo_and_sgcd_draw_the_same_batches_and_keep_the_same_groups(trained):
    """Dynamic sampling does not depend on the credit mode: with the same seed, `off` (GRPO) generates the same
    rounds and trains on the same groups as `sgcd` (DAPO-style GRPO is the matched control)."""
    sgcd, off = trained("dynamic_sgcd", **_DYNAMIC), trained("dynamic_off", credit_mode="off", **_DYNAMIC)
    assert len(off.rounds) == len(sgcd.rounds) == 2
    for a, b in zip(off.rounds, sgcd.rounds):
        assert a["prompts"] == b["prompts"]
        assert torch.equal(a["completion_ids"], b["completion_ids"]) and torch.equal(a["advantages"], b["advantages"])
    (kept_off,), (kept_sgcd,) = off.final, sgcd.final
    assert torch.equal(kept_off["completion_ids"], kept_sgcd["completion_ids"])
    assert torch.equal(kept_off["prompt_ids"], kept_sgcd["prompt_ids"])
    assert kept_off["advantages"].dim() == 1 and kept_sgcd["advantages"].dim() == 2  # only the credit differs
    resample = [k for k in sgcd.trainer.state.log_history[0] if k.startswith("sgcd/resample/")]
    assert resample and all(
        off.trainer.state.log_history[0][k] == sgcd.trainer.state.log_history[0][k] for k in resample
    )


def test_each_extra_round_is_announced():
    """A batch that needs extra rounds says so before each one ("round r/R: m of n groups mixed"): not hung."""
    flat, mixed = torch.zeros(4, 1), torch.tensor([[1.0], [0.0], [1.0], [0.0]])  # (4 rows, 1 reward function)
    rounds = iter([flat, mixed])
    first = next(rounds)
    args = types.SimpleNamespace(
        credit_success_threshold=0.5, credit_min_mixed_fraction=1.0, credit_max_resample_rounds=3
    )
    lines = []
    outputs, *_ = sampling.draw_rounds(
        {}, {"prompts": ["p"] * 4, "rewards_per_func": first}, slice(0, 4),
        lambda: ({}, {"prompts": ["p"] * 4, "rewards_per_func": next(rounds)}), lambda n: n,
        args=args, reward_weights=torch.ones(1), group_size=2, announce=lines.append,
    )  # fmt: skip
    assert len(outputs) == 2
    assert lines == ["dynamic sampling round 1/3: 0 of 2 groups mixed"]
