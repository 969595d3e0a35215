"""Benchmark of `DenseDivergenceScorer`: time per token, and peak memory as the completion grows.

    .venv/bin/python benchmarks/bench_scorer.py --quick             # CPU, < 2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_scorer.py                     # CPU, more tokens and repeats
    .venv/bin/python benchmarks/bench_scorer.py --device cuda       # GPU (bf16 by default there)

The model is a 2-layer, hidden-256 random Llama with the SmolLM2 vocabulary size (49152), built locally.

(a) Time: the scorer (two backbone forwards, chunked LM head, top-K divergence) against the plain way to get the same
    tokens' log-probs: two `torch.no_grad()` forwards with `logits_to_keep = T + 1`, a log-softmax over the full
    vocabulary and a gather. Median of the repeats; the ratio is scorer / plain.
(b) Peak memory at T = 1024, 4096, 8192 (one row), for the scorer and for the naive full-logits implementation
    (`model(...).logits` for student and teacher, then `topk_divergence` on all positions at once). The measurements
    run in one fresh subprocess: on CUDA `torch.cuda.max_memory_allocated`, on CPU the peak resident set size (the kernel's
    VmHWM, reset just before the call, and a 1 ms psutil sampler) above the resident size just before the call, with glibc's mmap threshold
    fixed at 64 KiB so that freed tensors leave the resident set at once. The goal is a scorer ratio
    peak(8192) / peak(1024) <= 1.1: only `chunk_size` positions of logits ever exist.
(c) `--group-prompt P` (e.g. 1150, the airline prompt): one sibling group of `--rows` rollouts sharing a P-token prompt
    (the teacher's: the same prompt plus a 128-token reference), `--length` completion tokens each; the scorer with
    `share_prefix=True` (prompt encoded once per context, completions on its key/value cache) against the unshared
    scorer, interleaved. `--model smollm2` scores with the bundled SmolLM2-135M-Instruct instead of the random model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

from trl_sgcd.credit.scoring.divergence import topk_divergence
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer

VOCAB, HIDDEN, LAYERS = 49152, 256, 2
PROMPT, REFERENCE = 64, 128
MEMORY_LENGTHS = (1024, 4096, 8192)


def build_model(device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(20.0)  # peaked, LM-like next-token distributions
    return model


def build_batch(rows: int, length: int, device: str) -> dict[str, torch.Tensor]:
    """Student = prompt + completion; teacher = reference + prompt + the same completion ids (TRL layout)."""
    g = torch.Generator().manual_seed(length)
    prompt = torch.randint(10, VOCAB, (rows, PROMPT), generator=g)
    reference = torch.randint(10, VOCAB, (rows, REFERENCE), generator=g)
    completion = torch.randint(10, VOCAB, (rows, length), generator=g)
    student = torch.cat([prompt, completion], 1)
    teacher = torch.cat([reference, prompt, completion], 1)
    batch = {
        "student_input_ids": student,
        "student_attention_mask": torch.ones_like(student),
        "teacher_input_ids": teacher,
        "teacher_attention_mask": torch.ones_like(teacher),
        "completion_ids": completion,
        "completion_mask": torch.ones_like(completion),
    }
    return {k: v.to(device) for k, v in batch.items()}


def run_scorer(model, batch, scorer):
    return scorer.score(
        model,
        *(
            batch[k]
            for k in (
                "student_input_ids",
                "student_attention_mask",
                "teacher_input_ids",
                "teacher_attention_mask",
                "completion_ids",
                "completion_mask",
            )
        ),
    )


@torch.no_grad()
def run_plain_logprobs(model, batch, temperature=1.0):
    """The plain way: two forwards, full-vocabulary log-softmax of the needed positions, gather."""
    t = batch["completion_ids"].size(1)
    out = []
    for prefix in ("student", "teacher"):
        logits = model(
            input_ids=batch[f"{prefix}_input_ids"],
            attention_mask=batch[f"{prefix}_attention_mask"],
            logits_to_keep=t + 1,
            use_cache=False,
        ).logits[:, :-1]  # (B, T, V)
        logits = logits.float() if temperature == 1.0 else logits.float() / temperature
        logp = torch.log_softmax(logits, -1)  # (B, T, V)
        out.append(logp.gather(-1, batch["completion_ids"][..., None]).squeeze(-1))  # (B, T)
        del logits, logp
    return out


@torch.no_grad()
def run_naive_divergence(model, batch, top_k=32):
    """Naive full-logits divergence: (B, L, V) logits for both contexts, then every position at once."""
    t = batch["completion_ids"].size(1)
    s = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
    q = model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
    s, q = s[:, -t - 1 : -1].reshape(-1, VOCAB), q[:, -t - 1 : -1].reshape(-1, VOCAB)  # (B*T, V)
    return topk_divergence(s, q, batch["completion_ids"].reshape(-1), top_k=top_k)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns, device, repeats):
    """Median seconds of each function; the repeats alternate between them, so load drift hits all alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench_time(args, dtype):
    model = build_model(args.device, dtype)
    batch = build_batch(args.rows, args.length, args.device)
    scorer = DenseDivergenceScorer(top_k=32, chunk_size=256)
    tokens = args.rows * args.length
    t_scorer, t_plain = time_interleaved(
        [lambda: run_scorer(model, batch, scorer), lambda: run_plain_logprobs(model, batch)], args.device, args.repeats
    )
    print(
        f"\n(a) time, {args.device}, B={args.rows}, T={args.length}, prompt={PROMPT}, V={VOCAB}, "
        f"median of {args.repeats}"
    )
    print(f"{'method':<44}{'total s':>10}{'us / token':>12}")
    print(f"{'scorer (top-32 divergence, chunk 256)':<44}{t_scorer:>10.3f}{1e6 * t_scorer / tokens:>12.1f}")
    print(f"{'plain no_grad forwards + full log-softmax':<44}{t_plain:>10.3f}{1e6 * t_plain / tokens:>12.1f}")
    print(f"ratio scorer / plain: {t_scorer / t_plain:.2f}")


def bench_group(args, dtype):
    if args.model == "smollm2":
        from transformers import AutoModelForCausalLM

        from trl_sgcd.tooluse.models import bundled_model_dir

        model = AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=dtype).to(args.device).eval()
    else:
        model = build_model(args.device, dtype)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(10, vocab, (1, args.group_prompt), generator=g).expand(args.rows, -1)
    reference = torch.randint(10, vocab, (1, REFERENCE), generator=g).expand(args.rows, -1)
    completion = torch.randint(10, vocab, (args.rows, args.length), generator=g)
    student, teacher = torch.cat([prompt, completion], 1), torch.cat([prompt, reference, completion], 1)
    batch = {
        "student_input_ids": student,
        "student_attention_mask": torch.ones_like(student),
        "teacher_input_ids": teacher,
        "teacher_attention_mask": torch.ones_like(teacher),
        "completion_ids": completion,
        "completion_mask": torch.ones_like(completion),
    }
    batch = {k: v.to(args.device) for k, v in batch.items()}
    shared, plain = (DenseDivergenceScorer(top_k=32, chunk_size=64, share_prefix=s) for s in (True, False))
    t_shared, t_plain = time_interleaved(
        [lambda: run_scorer(model, batch, shared), lambda: run_scorer(model, batch, plain)], args.device, args.repeats
    )
    print(
        f"\n(c) one group, {args.device}, model={args.model}, B={args.rows}, prompt={args.group_prompt}, "
        f"reference={REFERENCE}, T={args.length}, median of {args.repeats}, load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"{'scorer, shared prompt prefix':<44}{t_shared:>10.3f} s")
    print(f"{'scorer, every row re-encodes its prompt':<44}{t_plain:>10.3f} s")
    print(f"ratio shared / unshared: {t_shared / t_plain:.2f}")


def _rss_bytes():
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current size (Linux); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """VmHWM: peak resident size of this process since the last reset (ru_maxrss would include the parent's size
    at fork time, before the exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_peak(fn, device: str) -> int:
    """Peak extra memory (bytes) of one call of `fn`."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = _rss_bytes()
    kernel_peak = _reset_peak_rss()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    fn()
    stop.set()
    sampler.join()
    return max(peak[0], _peak_rss_bytes() if kernel_peak else 0) - base


def measure_all(device: str, dtype: torch.dtype) -> dict[str, list[int]]:
    """Run in a fresh process: peaks of the scorer and of the naive implementation at every length."""
    model = build_model(device, dtype)
    scorer = DenseDivergenceScorer(top_k=32, chunk_size=256)
    warm = build_batch(1, 128, device)  # first calls allocate once-only state (thread pools, caches): not measured
    run_scorer(model, warm, scorer)
    run_naive_divergence(model, warm)
    peaks = {"scorer": [], "naive": []}
    for length in MEMORY_LENGTHS:
        batch = build_batch(1, length, device)
        peaks["scorer"].append(measure_peak(lambda b=batch: run_scorer(model, b, scorer), device))
        peaks["naive"].append(measure_peak(lambda b=batch: run_naive_divergence(model, b), device))
    return peaks


def bench_memory(args):
    # A fixed mmap threshold makes glibc return every freed block >= 64 KiB to the OS at once, so the resident size
    # follows the live tensors instead of the allocator's cache.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--_measure", "--device", args.device, "--dtype", args.dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    peaks = json.loads(out.strip().splitlines()[-1])
    print(f"\n(b) peak extra memory, {args.device}, B=1, prompt={PROMPT}, teacher reference={REFERENCE}, V={VOCAB}")
    print(f"{'method':<34}" + "".join(f"{'T=' + str(t):>12}" for t in MEMORY_LENGTHS) + f"{'8192/1024':>12}")
    for impl, label in (("scorer", "scorer (chunk 256)"), ("naive", "naive full logits")):
        row = peaks[impl]
        print(f"{label:<34}" + "".join(f"{p / 2**20:>10.0f}MB" for p in row) + f"{row[-1] / row[0]:>12.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats (< 2 minutes on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--group-prompt", type=int, default=0, help="(c) only: shared prompt length of one group")
    parser.add_argument("--model", default="random", choices=["random", "smollm2"], help="model of (c)")
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    dtype = getattr(torch, args.dtype)
    if args._measure:
        print(json.dumps(measure_all(args.device, dtype)))
        return
    args.rows = args.rows or (2 if args.quick else 4)
    args.length = args.length or (256 if args.quick else 1024)
    args.repeats = args.repeats or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}")
    if args.group_prompt:
        bench_group(args, dtype)
        return
    bench_time(args, dtype)
    if not args.skip_memory:
        bench_memory(args)


if __name__ == "__main__":
    main()
