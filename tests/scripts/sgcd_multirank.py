"""One SGCD run on several ranks, launched by `tests/test_multiprocess.py` through `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        tests/scripts/sgcd_multirank.py --out /tmp/mr --layout span
    accelerate launch --config_file recipes/accelerate/cpu_2proc_zero3.yaml tests/scripts/sgcd_multirank.py \
        --out /tmp/mr --layout one_rank --deepspeed --steps 2 [--peft]

Every rank writes what the test checks into `--out`:

* `rank{r}.json`: the group indices it passed to the reference backend, per scoring call the rows scored, the micro-
  batch floor (`min_batches`), the scorer's `num_forwards` and the backbone forwards counted by a hook, the logged
  losses, and whether the trainable parameters changed;
* `rank{r}_step{s}.pt`: the inputs of `_apply_credit` (TRL's output tensors before credit and the credit batch),
  the scored rows with their divergence / entropy / eligible mask, the references and the resulting weights.

Layouts (global row = rank * per_device + local row; group = global row // num_generations):

* `span`: 2 ranks x 6 rows, G=4: group 0 on rank 0, group 1 spans both ranks, group 2 on rank 1; one success per
  group, at a different sibling position in each (global rows 1, 4, 11), so every group is mixed and the three
  references differ.
* `one_rank`: 2 ranks x G rows: rank 0 holds one success (row 0) and failures, rank 1 only failures. Every failure
  also makes a (wrong-key) tool call: TRL's tool loop runs one `unwrap_model_for_generation` per iteration, a ZeRO-3
  collective, so both ranks must run the same number of tool iterations whatever their groups are (without these
  calls TRL 1.16 itself fails under ZeRO-3 with a gloo collective mismatch, before SGCD runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

for name, value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("WANDB_MODE", "disabled"),
):
    os.environ.setdefault(name, value)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from tests.trainer_utils import ToyLookupEnv, tiny_args, tool_call_text, toy_dataset, toy_reward  # noqa: E402
from trl_sgcd import SGCDTrainer  # noqa: E402
from trl_sgcd.credit.scoring.model_access import backbone_of, unwrap_model  # noqa: E402
from trl_sgcd.tooluse.models import tiny_model_dir  # noqa: E402

KEYS = ["alpha", "beta", "gamma"]
OUTPUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask", "advantages")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--layout", choices=["span", "one_rank"], required=True)
    p.add_argument("--deepspeed", action="store_true", help="use_cpu=False, ddp_backend=gloo (DeepSpeed route)")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--peft", action="store_true", help="LoRA r=4 on q_proj, v_proj")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=96)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--scoring-batch-size", type=int, default=None)
    p.add_argument("--ddp-timeout", type=int, default=90)
    return p.parse_args()


def script_key(layout: str, rank: int, row: int, per_device: int, target: str) -> str | None:
    """The key the first turn of this row looks up (None: the model's own tokens stand)."""
    wrong = KEYS[(KEYS.index(target) + 1) % len(KEYS)]
    if layout == "span":
        return target if rank * per_device + row in (1, 4, 11) else None
    return target if (rank, row) == (0, 0) else wrong


def dataset(n: int):
    """`toy_dataset(n)` with task prompts of different lengths, so ranks left-pad their prompts to different widths."""

    def vary(row, i):
        user = dict(row["prompt"][1], content=row["prompt"][1]["content"] + " Please be careful." * (i % 4))
        return {"prompt": [row["prompt"][0], user]}

    return toy_dataset(n).map(vary, with_indices=True)


def scripted(layout: str, per_device: int):
    """SGCDTrainer whose first generation turn of each batch is a real tool call where `script_key` says so."""

    class Scripted(SGCDTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            if self._scripting_done or not self.model.training:
                return ids, logprobs
            self._scripting_done = True
            rank = self.accelerator.process_index
            for i, env in enumerate(self.environments or []):
                key = script_key(layout, rank, i, per_device, env.target)
                if key is not None and i < len(ids):
                    ids[i] = self.processing_class(tool_call_text(key), add_special_tokens=False)["input_ids"]
            return ids, logprobs

        def _generate_and_score_completions(self, inputs):
            self._scripting_done = False
            return super()._generate_and_score_completions(inputs)

    return Scripted


def build_trainer(a: argparse.Namespace):
    per_device = 6 if a.layout == "span" else a.num_generations
    overrides = dict(
        per_device_train_batch_size=per_device,
        num_generations=a.num_generations,
        max_steps=a.steps,
        max_completion_length=a.max_completion_length,
        max_tool_calling_iterations=1,
        temperature=a.temperature,
        ddp_timeout=a.ddp_timeout,
        credit_scoring_batch_size=a.scoring_batch_size,
        credit_strict=False,
        shuffle_dataset=False,  # prompts 0, 1, 2, ... in order: each rank left-pads its prompts to its own width
    )
    if a.deepspeed:
        overrides.update(use_cpu=False, ddp_backend="gloo")
    peft_config = None
    if a.peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return scripted(a.layout, per_device)(
        model=tiny_model_dir(),
        reward_funcs=toy_reward,
        train_dataset=dataset(8),
        args=tiny_args(os.path.join(a.out, "run"), **overrides),
        environment_factory=ToyLookupEnv,
        peft_config=peft_config,
    )


def count_references_and_forwards(trainer, record: dict) -> None:
    """Record the groups sent to the reference backend, and per scoring call the scorer's and a hook's forwards."""
    build = trainer.reference_builder.build

    def counted_build(groups):
        record["build_groups"].append([group.group_index for group in groups])
        return build(groups)

    hooked = {"on": False, "n": 0}
    backbone_of(unwrap_model(trainer.model)).register_forward_hook(
        lambda module, args, output: hooked.update(n=hooked["n"] + hooked["on"])
    )
    score = trainer.credit_scorer.score

    def counted_score(model, s_ids, *args, min_batches=0, **kwargs):
        hooked.update(on=True, n=0)
        try:
            result = score(model, s_ids, *args, min_batches=min_batches, **kwargs)
        finally:
            hooked["on"] = False
        record["score_calls"].append(
            {
                "n_rows": int(s_ids.size(0)),
                "min_batches": min_batches,
                "num_forwards": result.num_forwards,
                "hooked_forwards": hooked["n"],
            }
        )
        return result

    trainer.reference_builder.build, trainer.credit_scorer.score = counted_build, counted_score


def dump_credit(trainer, out: str) -> None:
    """Save, per `_apply_credit` call, its inputs, the rows scored with their features, and the weights."""
    rank, calls = trainer.accelerator.process_index, []
    apply_credit = trainer._apply_credit

    def dumped_apply_credit(output, batch, *args, **kwargs):
        before = {k: output[k].detach().cpu().clone() for k in OUTPUT_KEYS if output.get(k) is not None}
        # Everything the credit stages get: per-row lists of this rank, and gathered (global) lists and tensors.
        credit_batch = {k: v.detach().cpu() if torch.is_tensor(v) else list(v) for k, v in batch.items()}
        result = apply_credit(output, batch, *args, **kwargs)
        last = trainer.last_credit
        scores = last.scores
        scored = dict(
            rows=list(last.rows),
            divergence=None if scores is None else scores.divergence.cpu(),
            entropy=None if scores is None else scores.teacher_entropy.cpu(),
            eligible=None if last.eligible is None else last.eligible.cpu(),
        )  # (R, T) each
        torch.save(
            {
                "output": before,
                "batch": credit_batch,
                "scored": scored,
                "weights": last.weights.detach().cpu().clone(),
                "advantages_after": result["advantages"].detach().cpu(),
                "references": [None if r is None else r.text for r in last.references],
            },
            os.path.join(out, f"rank{rank}_step{len(calls)}.pt"),
        )
        calls.append(1)
        return result

    trainer._apply_credit = dumped_apply_credit


def gathered_trainable(trainer) -> dict[str, torch.Tensor]:
    """Full values of the trainable parameters (all-gathered under ZeRO-3, a collective every rank runs)."""
    params = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    partitioned = [p for _, p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return {n: p.detach().clone() for n, p in params}
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        return {n: p.detach().clone() for n, p in params}


def main() -> None:
    a = parse()
    trainer = build_trainer(a)
    rank = trainer.accelerator.process_index
    record = {"rank": rank, "world": trainer.accelerator.num_processes, "build_groups": [], "score_calls": []}
    count_references_and_forwards(trainer, record)
    dump_credit(trainer, a.out)

    before = gathered_trainable(trainer)
    out = trainer.train()
    after = gathered_trainable(trainer)
    deltas = [(after[n] - before[n]).abs().max().item() for n in before]
    logged = [h for h in trainer.state.log_history if "loss" in h]
    record.update(
        training_loss=out.training_loss,
        losses=[h["loss"] for h in logged],
        global_step=trainer.state.global_step,
        mixed_fraction=[h.get("sgcd/mixed_group_fraction") for h in logged],
        num_trainable=len(before),
        max_param_delta=max(deltas, default=0.0),
        params_finite=all(math.isfinite(d) for d in deltas),
    )
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f, indent=1)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
