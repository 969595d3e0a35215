"""Two SGCD steps with vLLM colocate on CPU, then a weight-sync probe; writes what tests/vllm checks to a JSON file.

    OMP_NUM_THREADS=1 .venv-vllm/bin/python tests/vllm/colocate_run.py --case plain --output-dir /tmp/vllm_plain

Cases: `plain` (plain prompts, full fine-tuning), `tools` (`environment_factory` with a real tool loop; the first turn
of half the rollouts is a scripted tool call, as in tests/trainer_utils.py), `lora` (plain prompts, LoRA adapters,
which TRL merges for the sync), and `tools_lora` (both: the tool loop with LoRA adapters). tests/vllm runs `plain` and
`tools_lora`: every behaviour once, in two engine start-ups instead of three. The model is the bundled
SmolLM2-135M-Instruct. Run as its own process: vLLM wants a fresh one, and its CPU worker needs the `__main__` guard
below. `timings` in the JSON: seconds to build the trainer (model, engine start-up), to train, and for the probe.

The probe after training: add noise to the trainer's trainable weights, measure the mean |vLLM - trainer| log-prob of
tokens the engine samples (stale engine), call the generation backend's `sync_weights`, measure again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def half_of_each_group(completions, **kwargs) -> list[float]:
    """1.0 for the first half of each group of 4 sibling rollouts, 0.0 for the rest: every group is mixed."""
    return [1.0 if i % 4 < 2 else 0.0 for i in range(len(completions))]


def plain_dataset(n: int = 8):
    from datasets import Dataset

    topics = ["colours", "fruits", "rivers", "planets", "metals", "trees", "birds", "tools"]
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Name three {t}, one per line."}]} for t in topics[:n]]
    )


def logprob_gap(generation, model, prompt_ids: list[int], *, temperature: float, n_tokens: int = 24) -> float:
    """Mean |vLLM - trainer| log-prob of `n_tokens` tokens the engine samples after `prompt_ids`."""
    import torch
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=n_tokens, temperature=temperature, logprobs=0, seed=0, ignore_eos=True)
    out = generation.llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0].outputs[0]
    ids = list(out.token_ids)
    engine = torch.tensor([step[token].logprob for step, token in zip(out.logprobs, ids)])  # (n,)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1].float()  # (n, V)
    trainer = torch.log_softmax(logits / temperature, dim=-1).gather(-1, torch.tensor(ids)[:, None])[:, 0]  # (n,)
    return (engine - trainer).abs().mean().item()


def _scripted_with_logprobs(scripted_cls):
    """The scripted tool call replaces a rollout's first-turn tokens; vLLM has no log-probs for them: NaN (TRL then
    leaves those tokens out of its importance-sampling correction)."""

    class ScriptedVLLM(scripted_cls):
        def _generate_single_turn(self, *args, **kwargs):
            completion_ids, logprobs = super()._generate_single_turn(*args, **kwargs)
            if logprobs is not None:
                logprobs = [
                    lp if len(lp) == len(ids) else [float("nan")] * len(ids)
                    for ids, lp in zip(completion_ids, logprobs)
                ]
            return completion_ids, logprobs

    return ScriptedVLLM


def build_trainer(case: str, output_dir: str):
    from transformers import AutoTokenizer

    from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward
    from trl_sgcd.tooluse.models import bundled_model_dir
    from trl_sgcd.trainer import SGCDTrainer

    path = bundled_model_dir()
    args = tiny_args(
        output_dir,
        max_steps=2,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=1024,
        max_completion_length=24,
        temperature=1.0,
        learning_rate=1e-4 if case.endswith("lora") else 1e-5,
    )
    kwargs = dict(args=args, processing_class=AutoTokenizer.from_pretrained(path))
    if case in ("tools", "tools_lora"):
        cls = _scripted_with_logprobs(scripted_first_turn(SGCDTrainer))
        kwargs.update(reward_funcs=toy_reward, train_dataset=toy_dataset(8), environment_factory=ToyLookupEnv)
    else:
        cls = SGCDTrainer
        kwargs.update(reward_funcs=half_of_each_group, train_dataset=plain_dataset())
    if case.endswith("lora"):
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    return cls(model=path, **kwargs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=["plain", "tools", "lora", "tools_lora"], required=True)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    import time

    start = time.perf_counter()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    trainer = build_trainer(args.case, args.output_dir)
    timings = {"build": time.perf_counter() - start}
    generation = trainer.vllm_generation
    counts = {"vllm_generate": 0, "sync_weights": 0}
    real_generate, real_sync = generation.llm.generate, generation.sync_weights

    def counting_generate(*a, **k):
        counts["vllm_generate"] += 1
        return real_generate(*a, **k)

    def counting_sync(*a, **k):
        counts["sync_weights"] += 1
        return real_sync(*a, **k)

    generation.llm.generate, generation.sync_weights = counting_generate, counting_sync
    trainer.train()
    timings["train"] = time.perf_counter() - start - timings["build"]
    counts_after_training = dict(counts)

    # The probe: make the engine stale on purpose, then sync.
    model = trainer.model
    model.eval()
    tokenizer = trainer.processing_class
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a short poem about the sea."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    gap_synced = logprob_gap(generation, model, prompt, temperature=1.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:  # LoRA factors start at (or near) zero: they get a noise floor of 0.5 * 0.02
                floor = 0.5 if "lora_" in name else 0.05
                scale = max(p.float().std().item(), floor) if p.numel() > 1 else floor
                p.add_(0.02 * scale * torch.randn(p.shape, generator=generator).to(p.dtype))
    gap_stale = logprob_gap(generation, model, prompt, temperature=1.0)
    real_sync()
    gap_after = logprob_gap(generation, model, prompt, temperature=1.0)
    timings["probe"] = time.perf_counter() - start - timings["build"] - timings["train"]

    result = {
        "case": args.case,
        "generation_class": type(generation).__name__,
        "engine_dtype": str(generation.llm.llm_engine.model_config.dtype),
        "trainer_dtype": str(next(model.parameters()).dtype),
        "lora_adapters": any("lora_" in name for name, _ in model.named_parameters()),
        "counts": counts_after_training,
        "log_history": [
            {k: v for k, v in e.items() if isinstance(v, (int, float))} for e in trainer.state.log_history
        ],
        "credit_weight_max": [e["sgcd/weight_max"] for e in trainer.state.log_history if "sgcd/weight_max" in e],
        "gap_end_of_training": gap_synced,  # the engine is one optimizer step behind here
        "gap_stale": gap_stale,
        "gap_after_sync": gap_after,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    with open(os.path.join(args.output_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "log_history"}, indent=1))
    return result


if __name__ == "__main__":
    main()
