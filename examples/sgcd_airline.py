"""The two-name swap: GRPOTrainer -> SGCDTrainer, GRPOConfig -> SGCDConfig, on the bundled airline environment.

Launch (CPU, bundled SmolLM2-135M-Instruct, offline contrast reference):
    python examples/sgcd_airline.py --model builtin:smollm2 --max-steps 20
Multi-GPU (any causal LM with a tool chat template; vLLM and DeepSpeed pass straight through to TRL):
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml examples/sgcd_airline.py --model Qwen/Qwen3-4B-Instruct-2507
Tiny random model, one step, credit visible in seconds (what the test runs):
    python examples/sgcd_airline.py --model builtin:tiny-context --scripted-sibling --max-steps 1 --num-tasks 2 \
        --max-completion-length 48
`builtin:tiny-context` is a random model whose predictions depend on its context; `--scripted-sibling` scores the first
rollout of each task as a success (`trl_sgcd.envs.scripted`), so groups are mixed and `sgcd/credit_tokens` > 0. Both
only show the mechanism; `benchmarks/bench_credit.py` measures where credit lands with real outcomes.

Compared with a GRPO script only two names change; everything else is TRL's API.
"""

import argparse

import torch

from trl_sgcd import SGCDConfig, SGCDTrainer  # was: from trl import GRPOConfig, GRPOTrainer
from trl_sgcd.envs import AIRLINE_PRIVATE_COLUMNS, AirlineEnv, airline_reward, make_airline_dataset
from trl_sgcd.envs.scripted import scripted_sibling_reward
from trl_sgcd.tooluse.models import builtin_model_dir


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:smollm2", help="builtin:smollm2, builtin:tiny, or a model id/path")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--num-tasks", type=int, default=None, help="train on the first N train tasks")
    parser.add_argument("--max-completion-length", type=int, default=256)
    parser.add_argument("--output-dir", default="outputs/sgcd-airline")
    parser.add_argument("--scripted-sibling", action="store_true", help="first rollout per task succeeds (fast path)")
    args = parser.parse_args()
    model = builtin_model_dir(args.model)  # "builtin:smollm2" -> the bundled model's folder; other names unchanged
    on_gpu = torch.cuda.is_available()

    config = SGCDConfig(  # was: GRPOConfig(...)
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=args.max_completion_length,
        max_tool_calling_iterations=4,
        temperature=0.4,
        top_p=0.95,
        learning_rate=1e-6 if on_gpu else 5e-6,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        # SGCD: the offline contrast reference, gold columns masked before anything leaves the process.
        credit_mode="sgcd",
        credit_reference_backend="contrast",
        credit_private_columns=AIRLINE_PRIVATE_COLUMNS,
    )
    trainer = SGCDTrainer(  # was: GRPOTrainer(...)
        model=model,
        reward_funcs=scripted_sibling_reward if args.scripted_sibling else airline_reward,
        args=config,
        train_dataset=make_airline_dataset("train", n=args.num_tasks),
        environment_factory=AirlineEnv,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    last = trainer.state.log_history[-2] if len(trainer.state.log_history) > 1 else trainer.state.log_history[-1]
    print({k: v for k, v in last.items() if k.startswith("sgcd/") or k in ("loss", "reward")})


if __name__ == "__main__":
    main()
