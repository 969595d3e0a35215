"""Evaluate a checkpoint on a τ² split: greedy pass@1, pass^k, per category, the tool-use audit, and two reference
lines that need no model: the no-op policy (answers once, calls nothing) and the scripted gold-action expert (1.0).

```bash
python -m trl_sgcd.envs.tau2.evaluate --env tau2:airline --split test --model builtin:smollm2 --output out.json
```

The rollout loop, metrics and audit are `trl_sgcd.tooluse.evaluation.evaluate` (the loop `GRPOTrainer` runs with an
`environment_factory`); the environment, dataset and reward come from [`~trl_sgcd.envs.tau2.resolve`], and `trl-sgcd eval
--dataset_name tau2:airline` uses the same pieces through `trl_sgcd.cli.utils.resolve_env_spec`.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser():
    p = argparse.ArgumentParser(prog="trl-sgcd eval (tau2)", description="Evaluate a checkpoint on a τ² split.")
    p.add_argument("--env", default="tau2:airline", help="τ² spec: tau2:airline, tau2:retail, tau2:airline:simulator.")
    p.add_argument("--model", default="builtin:smollm2", help="Checkpoint folder, builtin:smollm2 or builtin:tiny.")
    p.add_argument("--split", default="test", help="τ² split: test (default), train, base.")
    p.add_argument("--n", type=int, default=None, help="Evaluate only the first n tasks.")
    p.add_argument("--k", type=int, default=1, help="Sampled rollouts per task for pass^k.")
    p.add_argument("--temperature", type=float, default=0.4)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--max_turns", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_baselines", action="store_true", help="Skip the no-op and scripted-expert lines.")
    p.add_argument("--output", default=None, help="Write metrics and per-task records to this JSON file.")
    p.add_argument("--no_progress", action="store_true")
    return p


def print_summary(name: str, result: dict) -> None:
    """One line overall, one per category."""
    print(
        f"{name:<10} pass@1 {result['pass@1']:.3f}"
        + (f"   pass^k {result['pass^k']:.3f}" if "pass^k" in result else "")
    )
    for category, m in result["per_category"].items():
        print(f"  {category:<12} pass@1 {m['pass@1']:.3f}   n={m['num_tasks']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    from trl_sgcd.envs.tau2 import resolve
    from trl_sgcd.envs.tau2.expert import scripted_scores
    from trl_sgcd.envs.tau2.reward import skipped_judge_checks, tau2_reward

    try:
        spec = resolve(args.env)
        dataset = spec.dataset(args.split, n=args.n)
    except (ValueError, ImportError) as e:
        print(f"trl-sgcd eval: error: {e}", file=sys.stderr)
        return 2
    output = {"env": args.env, "split": args.split, "judge": skipped_judge_checks(spec.domain, dataset["task_id"])}
    if not args.no_baselines:
        for policy in ("noop", "expert"):
            output[policy] = scripted_scores(spec.domain, args.split, policy=policy, rows=list(dataset))
            print_summary(policy, output[policy])
    if args.model != "none":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trl_sgcd.tooluse.evaluation import evaluate
        from trl_sgcd.tooluse.models import builtin_model_dir

        path = builtin_model_dir(args.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        result = evaluate(
            model,
            tokenizer,
            dataset,
            environment_factory=spec.environment_factory,
            reward_func=tau2_reward,
            k=args.k,
            temperature=args.temperature,
            top_p=args.top_p,
            max_turns=args.max_turns,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.no_progress,
        )
        output["model"] = result
        print_summary("model", result)
        audit = result["audit"]
        print(
            f"  zero-tool success share {audit['zero_tool_success_share']:.3f}   tools/success "
            f"{audit['tools_per_success']:.2f}   tool failure rate {audit['tool_failure_rate']:.3f}"
        )
    judge = output["judge"]
    print(
        f"LLM-judged checks: {judge['with_nl_assertions']}/{judge['tasks']} tasks carry nl_assertions, "
        f"{judge['nl_assertions_in_reward_basis']} in the reward basis (judged); the rest are skipped, as in τ²."
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(output, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
