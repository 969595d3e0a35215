"""Your own tool environment, your own verifier, and an external LLM (through litellm) writing the credit references.

Launch against any OpenAI-compatible server (vLLM, SGLang, a hosted API):
    export REFERENCE_API_KEY=...            # only if the server needs one; the key never goes in a config file
    python examples/custom_env_litellm.py --model Qwen/Qwen2.5-0.5B-Instruct \
        --reference-model openai/Qwen3-32B --reference-api-base http://localhost:8000/v1
Tiny random model, one step, a local OpenAI-compatible server (what the test runs). Start the server in another shell
(`python -m trl_sgcd.testing.llm_server --port 8000`: it prints its URL and serves until Ctrl-C), then:
    python examples/custom_env_litellm.py --model builtin:tiny-context --scripted-sibling --max-steps 1 \
        --max-completion-length 48 \
        --reference-api-base http://127.0.0.1:PORT/v1
`builtin:tiny-context` is a random model whose predictions depend on its context, and `--scripted-sibling` counts
the first rollout of every task as a success (a scripted sibling: the random model never succeeds), so the groups
are mixed and `sgcd/credit_tokens` is above 0 within the step. Both are for seeing the mechanism, not for training.

An environment for TRL is a class with `reset(**row)` and tool methods (type hints + a Google-style docstring); the
reward function reads the final state. If the LLM is slow, down or answers garbage, that group falls back to the
offline contrast reference and training goes on (`sgcd/reference_source/*` counts what happened).
"""

import argparse
import json
import os

import torch
from datasets import Dataset

from trl_sgcd import SGCDConfig, SGCDTrainer
from trl_sgcd.tooluse.models import builtin_model_dir

STOCK = {"widget": 12, "gadget": 0, "gizmo": 5}


class WarehouseEnv:
    """A tiny warehouse: check stock, reserve items. The task is to reserve the requested quantity if possible."""

    def reset(self, **row):
        self.stock = dict(STOCK)
        self.reserved: dict[str, int] = {}
        return None

    def check_stock(self, item: str) -> str:
        """Check how many units of an item are in stock.

        Args:
            item: Item name, e.g. "widget".
        """
        if item not in self.stock:
            raise KeyError(f"unknown item {item!r}")
        return json.dumps({"item": item, "in_stock": self.stock[item]})

    def reserve(self, item: str, quantity: int) -> str:
        """Reserve units of an item.

        Args:
            item: Item name.
            quantity: Number of units to reserve.
        """
        if self.stock.get(item, 0) < quantity:
            raise ValueError(f"only {self.stock.get(item, 0)} {item} in stock")
        self.stock[item] -= quantity
        self.reserved[item] = self.reserved.get(item, 0) + quantity
        return json.dumps({"reserved": {item: quantity}, "order_token": "sk-test-9f8e7d6c5b4a39281706"})


def reservation_reward(completions, environments, item, quantity, **kwargs):
    """1.0 when exactly the requested quantity of the requested item was reserved, else 0.0."""
    return [float(env.reserved == {i: q}) for env, i, q in zip(environments, item, quantity)]


def scripted_sibling(reward_func):
    """`reward_func`, with the first rollout of each request in the batch scored 1.0 (a scripted sibling)."""

    def reward(completions, environments, item, quantity, **kwargs):
        rewards = reward_func(completions, environments, item, quantity, **kwargs)
        seen = set()
        for k, key in enumerate(zip(item, quantity)):
            if key not in seen:
                seen.add(key)
                rewards[k] = 1.0
        return rewards

    return reward


def dataset():
    rows = [("widget", 3), ("gizmo", 2), ("widget", 1), ("gizmo", 5)]
    return Dataset.from_list(
        [
            {
                "prompt": [
                    {"role": "system", "content": "You manage a warehouse with tools."},
                    {"role": "user", "content": f"Please reserve {q} {i}(s) for me."},
                ],
                "item": i,
                "quantity": q,
            }
            for i, q in rows
        ]
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:smollm2")
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--reference-model", default="openai/reference-model")
    parser.add_argument("--reference-api-base", required=True)
    parser.add_argument("--max-completion-length", type=int, default=128)
    parser.add_argument("--output-dir", default="outputs/sgcd-warehouse")
    parser.add_argument("--scripted-sibling", action="store_true", help="first rollout per request succeeds")
    args = parser.parse_args()
    model = builtin_model_dir(args.model)  # "builtin:smollm2" -> the bundled model's folder; other names unchanged
    on_gpu = torch.cuda.is_available()
    config = SGCDConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=args.max_completion_length,
        max_tool_calling_iterations=3,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        credit_reference_backend="litellm",
        credit_reference_model=args.reference_model,
        credit_reference_api_base=args.reference_api_base,
        credit_reference_api_key_env="REFERENCE_API_KEY" if os.environ.get("REFERENCE_API_KEY") else None,
        credit_reference_deadline=30.0,
        credit_reference_fallback="contrast",
        credit_private_columns=["quantity"],
    )
    trainer = SGCDTrainer(
        model=model,
        reward_funcs=scripted_sibling(reservation_reward) if args.scripted_sibling else reservation_reward,
        args=config,
        train_dataset=dataset(),
        environment_factory=WarehouseEnv,
    )
    trainer.train()
    print({k: v for k, v in trainer.state.log_history[0].items() if k.startswith("sgcd/")})


if __name__ == "__main__":
    main()
