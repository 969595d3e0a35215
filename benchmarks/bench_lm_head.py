"""TRL's loss forward + backward on CPU: its fused LM head over every position (TRL 1.16 off Triton) against only the
completion positions (`credit_compact_lm_head`, `trl_sgcd.lm_head`).

    OMP_NUM_THREADS=2 python benchmarks/bench_lm_head.py                       # SmolLM2, 8 x (1150 + 750) tokens
    python benchmarks/bench_lm_head.py --model tiny --rows 8 --prompt 1150 --completion 48   # the example's shape

Rows shaped like an airline step: a `--prompt`-token prompt (system message and tool schemas) with label -100 and a
`--completion`-token completion with labels. Each repeat runs both arms (order alternating) on the same batch in the
same process: `model(input_ids, labels, fused_lm_head=True).loss.backward()`, as in TRL's `_compute_loss`. Prints the
median seconds per arm and the ratio compact / full measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from trl_sgcd.lm_head import compact_lm_head


def _model(name: str):
    from trl_sgcd.tooluse.models import bundled_model_dir, tiny_model_dir

    path = bundled_model_dir() if name == "smollm2" else tiny_model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.gradient_checkpointing_enable()  # TRL's default
    model.config.use_cache = False
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    return model.train()


def _step(model, input_ids, labels, compact: bool) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with compact_lm_head(compact):
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    (out.loss + 0.0 * out.entropy.sum()).backward()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=1150)
    p.add_argument("--completion", type=int, default=750)
    p.add_argument("--micro-batch", type=int, default=2, help="rows per forward/backward (gradient accumulation)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _model(args.model)
    length = args.prompt + args.completion
    input_ids = torch.randint(10, model.config.vocab_size, (args.rows, length))
    labels = input_ids.clone()
    labels[:, : args.prompt] = -100
    times = {"full": [], "compact": []}
    for r in range(args.repeats):
        for arm in ("full", "compact") if r % 2 == 0 else ("compact", "full"):
            total = 0.0
            for start in range(0, args.rows, args.micro_batch):
                rows = slice(start, start + args.micro_batch)
                total += _step(model, input_ids[rows], labels[rows], compact=arm == "compact")
            times[arm].append(total)
            print(f"repeat {r} {arm:<8} {total:8.2f} s", flush=True)
    full, compact = statistics.median(times["full"]), statistics.median(times["compact"])
    print(
        f"model={args.model} rows={args.rows} prompt={args.prompt} completion={args.completion} "
        f"micro_batch={args.micro_batch} threads={torch.get_num_threads()} median of {args.repeats}"
    )
    print(f"loss forward+backward, every position (TRL 1.16 on CPU)   {full:8.2f} s")
    print(f"loss forward+backward, completion positions (compact)     {compact:8.2f} s")
    print(f"ratio compact / full: {compact / full:.2f}")


if __name__ == "__main__":
    main()
