"""Where credit lands: SGCD's credit weights against ground-truth decisive tokens, per reference and divergence.

```bash
python benchmarks/bench_credit.py                          # warm start (cached) -> sample (cached) -> score -> table
python benchmarks/bench_credit.py --phase sample           # only the expensive, resumable sampling
python benchmarks/bench_credit.py --html docs/credit_localization.html   # also the picture of a few rollouts
python benchmarks/bench_credit.py --policy tiny --tasks 2 --k 2 --expert-siblings 1   # smoke run (seconds)
```

1. **Policy**: the demo's warm start of the bundled SmolLM2-135M (`trl_sgcd.tooluse.warmstart`, cached by its
   settings; ~10 min of 2 idle CPU cores the first time), or `--policy tiny` / a folder.
2. **Rollouts**: `--k` rollouts of each of the first `--tasks` airline TRAIN tasks at the training temperature (0.8,
   top-p 0.95, the demo's settings), cached on disk by settings and resumable (`credit_rollouts.py`). Only groups
   with mixed outcomes are scored. The held-out test tasks are never used.
3. **Scoring, no training**: every rollout of a mixed group is scored by the policy under each credit reference:
   `contrast` (the offline contrast builder), `llm` (the litellm backend against a real local OpenAI-compatible
   server whose answers come from a SCRIPTED responder, not a language model: it quotes the sanitized calls of a
   successful sibling and, for each failed one, its first differing step, in the five sections) and `no_reference`
   (the raw trace of ANOTHER successful sibling, never the row itself; rows without one are skipped), each with the
   reverse KL, forward KL and JSD, then the trainer's segmenter and weights with the `SGCDConfig` defaults.
4. **Metrics** (`trl_sgcd.credit.report.localization`) against `trl_sgcd.envs.decisive` labels: credit-mass lift, recall,
   precision; the same for equal-mass random spans and `uniform`; medians over rollouts with 95% bootstrap
   intervals. Diagnostics: the lift of the raw divergence (before the segmenter), the share of decisive tokens that
   the literal mask leaves eligible, and two single changes of the contrast / reverse-KL variant (no literal mask;
   `credit_spike_z` 1.0), measured on the same train rollouts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from credit_metrics import (  # noqa: E402
    DIVERGENCES,
    REFERENCES,
    format_breakdown,
    format_table,
    outcome_breakdown,
    summarize_variants,
)
from credit_rollouts import literal_mask_audit, rollout_key, sample_rollouts  # noqa: E402
from credit_scoring import PrefixScorer, common_prefix_length, dense_scores  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--phase", choices=("all", "sample"), default="all")
    p.add_argument(
        "--policy", default="warm", help='"warm" (the demo warm start, default), "tiny", "tiny-context", or a folder'
    )
    p.add_argument("--tasks", type=int, default=32, help="train tasks (groups) to sample")
    p.add_argument("--k", type=int, default=4, help="rollouts per task (the demo's num_generations)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-turns", type=int, default=4, help="assistant turns per rollout (demo: 3 tool calls + 1)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per assistant turn")
    p.add_argument("--sft-steps", type=int, default=None, help="warm-start SFT steps (default: the demo's)")
    p.add_argument("--sft-batch-size", type=int, default=None, help="warm-start conversations per step")
    p.add_argument("--expert-siblings", type=int, default=0, help="scripted expert rollouts per group (smoke runs)")
    p.add_argument("--random-draws", type=int, default=16, help="random-span placements per rollout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="rollout cache (default: <trl_sgcd cache>/credit_bench)")
    p.add_argument("--output", default="outputs/bench_credit/results.json")
    p.add_argument("--html", default=None, help="write the picture of a few rollouts (HTML) here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--references", nargs="+", default=list(REFERENCES), choices=REFERENCES, help="contexts to score")
    p.add_argument(
        "--bf16", action="store_true", help="sample under bf16 autocast (~2x faster with AMX; scoring stays float32)"
    )
    return p


def _policy_dir(name: str, sft_steps=None, sft_batch_size=None) -> str:
    from trl_sgcd.tooluse.models import tiny_context_model_dir, tiny_model_dir
    from trl_sgcd.tooluse.warmstart import WARM_START_DEFAULTS, warm_start

    if name == "warm":
        overrides = {"max_steps": sft_steps, "batch_size": sft_batch_size}
        return warm_start(**{**WARM_START_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}})
    return {"tiny": tiny_model_dir, "tiny-context": tiny_context_model_dir}.get(name, lambda: name)()


def _config_defaults() -> dict:
    from trl_sgcd import SGCDConfig

    return {f.name: f.default for f in fields(SGCDConfig) if f.name.startswith("credit_")}


# --------------------------------------------------------------------------------------------------- references
def scripted_reference(body: dict) -> str:
    """The scripted 'LLM' of the local server: restates the sanitized sibling traces of the request (no model)."""
    import re

    from trl_sgcd.credit.reference.prompt import SECTION_TITLES, section_header

    text = body["messages"][-1]["content"]
    siblings = re.findall(r'<sibling id="(\d+)" outcome="(\w+)">\n(.*?)\n</sibling>', text, re.DOTALL)
    calls = {i: [ln for ln in trace.splitlines() if ln.strip() and "->" not in ln[:4]] for i, _, trace in siblings}
    good = [i for i, outcome, _ in siblings if outcome == "success"]
    best = min(good, key=lambda i: len(calls[i])) if good else None
    deviations, failed = [], []
    for i, outcome, _ in siblings:
        if outcome == "success" or best is None:
            continue
        mine, ref = calls[i], calls[best]
        k = next((j for j in range(min(len(mine), len(ref))) if mine[j] != ref[j]), min(len(mine), len(ref)))
        wrong = mine[k] if k < len(mine) else "(stopped)"
        right = ref[k] if k < len(ref) else "(nothing more)"
        deviations.append(
            f"- Sibling {i}, step {k + 1}: did `{wrong.strip()[:200]}` where the success did `{right.strip()[:200]}`"
        )
        failed.append(f"- Sibling {i}: " + " | ".join(ln.strip()[:120] for ln in mine[:4]))
    body_of = {
        SECTION_TITLES[0]: "- Look up the record named in the request before acting on it.",
        SECTION_TITLES[1]: "\n".join(f"- {ln.strip()[:240]}" for ln in calls.get(best, [])) or "- (none)",
        SECTION_TITLES[2]: "\n".join(failed) or "- (none)",
        SECTION_TITLES[3]: "\n".join(deviations) or "- (none)",
        SECTION_TITLES[4]: "- Keep every [PRIVATE] value masked.",
    }
    return "\n\n".join(f"{section_header(t)}\n{body_of[t]}" for t in SECTION_TITLES)


def build_references(groups, tokenizer, *, config: dict, api_base: str) -> dict:
    """`{reference name: {global row: CreditReference}}` for every row of the mixed `groups`."""
    from trl_sgcd import SiblingReferenceBuilder
    from trl_sgcd.credit.reference.builder import sibling_contexts
    from trl_sgcd.envs.airline import AIRLINE_PRIVATE_COLUMNS

    common = dict(private_columns=AIRLINE_PRIVATE_COLUMNS, tokenizer=tokenizer)
    contrast = SiblingReferenceBuilder("contrast", **common).build(groups)
    llm_builder = SiblingReferenceBuilder(
        "litellm", model="openai/scripted-summariser", api_base=api_base, api_key="local", retries=1, **common
    )
    llm = llm_builder.build(groups)
    out = {name: {} for name in REFERENCES}
    for g, group in enumerate(groups):
        # the trainer's sibling context: another successful sibling, never the row itself (a lone success gets none)
        siblings = sibling_contexts(
            group,
            private_columns=AIRLINE_PRIVATE_COLUMNS,
            observation_max_chars=config["credit_observation_max_chars"],
        )
        for rollout, sibling in zip(group.rollouts, siblings):
            out["contrast"][rollout.index] = contrast[g]
            out["llm"][rollout.index] = llm[g]
            if sibling is not None:
                out["no_reference"][rollout.index] = sibling
    return out, dict(llm_builder.stats)


# --------------------------------------------------------------------------------------------------- scoring
def _teacher_prompt(tokenizer, prompt, text, tools, max_tokens):
    from trl_sgcd.credit.reference.builder import cap_reference
    from trl_sgcd.credit.scoring.teacher import insert_reference

    capped = cap_reference(text, tokenizer, max_tokens)
    return tokenizer.apply_chat_template(
        insert_reference(prompt, capped), tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]


def score_rollouts(model, tokenizer, rollouts, refs, *, config, temperature):
    """Per row and reference: divergence and entropy per divergence, and the literal mask (numpy arrays)."""
    from transformers.utils import get_json_schema

    from trl_sgcd.credit.scoring.teacher import literal_token_mask
    from trl_sgcd.envs.airline import AirlineEnv
    from trl_sgcd.tooluse.evaluation import environment_tools

    tools = [get_json_schema(t) for t in environment_tools(AirlineEnv())]
    rows = sorted({i for per in refs.values() for i in per})
    teachers = {
        (name, i): _teacher_prompt(
            tokenizer, rollouts[i]["prompt"], ref.text, tools, config["credit_reference_max_tokens"]
        )
        for name, per in refs.items()
        for i, ref in per.items()
        if ref.source != "none" and ref.text
    }
    prompts = [rollouts[i]["prompt_ids"] for i in rows] + list(teachers.values())
    scorer = PrefixScorer(model, prompts[0][: common_prefix_length(prompts) - 1], temperature=temperature)
    scores = {}
    for n, i in enumerate(rows):
        r = rollouts[i]
        completion = r["completion_ids"]
        student = torch.log_softmax(scorer.completion_logits(r["prompt_ids"], completion), dim=-1)  # (T, V)
        for name in REFERENCES:
            if (name, i) not in teachers:
                continue
            teacher = scorer.completion_logits(teachers[(name, i)], completion)
            per_div = dense_scores(student, teacher, completion, top_k=config["credit_top_k"], divergences=DIVERGENCES)
            literal = literal_token_mask(  # the trainer's rule: literals in the prompt or an earlier observation count
                torch.tensor([completion]),
                [refs[name][i].masked_literals],
                tokenizer,
                prompt_ids=[r["prompt_ids"]],
                tool_mask=torch.tensor([r["tool_mask"]]),
            )[0]
            scores[(name, i)] = {
                "divergence": {d: v[0].numpy() for d, v in per_div.items()},
                "entropy": {d: v[1].numpy() for d, v in per_div.items()},
                "literal": literal.numpy(),
            }
        if (n + 1) % 8 == 0:
            print(f"[score] {n + 1}/{len(rows)} rollouts", flush=True)
    return scores


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgcd.credit.siblings import build_sibling_groups
    from trl_sgcd.envs.airline_tasks import get_task
    from trl_sgcd.envs.decisive import decisive_token_spans
    from trl_sgcd.tooluse.models import cache_root

    t0 = time.perf_counter()
    path = _policy_dir(args.policy, args.sft_steps, args.sft_batch_size)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    settings = {
        "policy_name": os.path.basename(os.path.normpath(path)),
        "n_tasks": args.tasks,
        "k": args.k,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_turns": args.max_turns,
        "max_new_tokens": args.max_new_tokens,
        "expert_siblings": args.expert_siblings,
        "seed": args.seed,
        "version": 1,
        **({"bf16": True} if args.bf16 else {}),  # absent when off: the float32 caches keep their folder
    }
    folder = os.path.join(args.cache_dir or os.path.join(cache_root(), "credit_bench"), rollout_key(settings))
    t_sample = time.perf_counter()
    rollouts = sample_rollouts(
        model,
        tokenizer,
        folder=folder,
        n_tasks=args.tasks,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        expert_siblings=args.expert_siblings,
        bf16=args.bf16,
    )
    sample_s = time.perf_counter() - t_sample
    print(f"[bench] {len(rollouts)} rollouts in {folder} ({sample_s:.0f} s this call)", flush=True)
    if args.phase == "sample":
        return 0

    t_score = time.perf_counter()
    config = _config_defaults()
    groups = build_sibling_groups(
        [r["prompt"] for r in rollouts],
        [r["completion"] for r in rollouts],
        [r["reward"] for r in rollouts],
        [{"gold_actions": r["gold_actions"], "gold_answer": r["gold_answer"]} for r in rollouts],
        num_generations=args.k,
        success_threshold=config["credit_success_threshold"],
    )
    mixed = [g for g in groups if g.is_mixed]
    print(f"[bench] {len(mixed)} of {len(groups)} groups mixed ({len(mixed) * args.k} rollouts)", flush=True)
    if not mixed:
        print("[bench] no mixed group: nothing to score", flush=True)
        return 1
    from trl_sgcd.testing.llm_server import FakeLLMServer

    with FakeLLMServer(answer=scripted_reference) as server:
        refs, llm_stats = build_references(mixed, tokenizer, config=config, api_base=server.base_url)
    refs = {name: per if name in args.references else {} for name, per in refs.items()}
    labels = {
        i: decisive_token_spans(
            get_task(rollouts[i]["task_id"], seed=rollouts[i]["seed"]),
            rollouts[i]["completion_ids"],
            rollouts[i]["tool_mask"],
            tokenizer,
            success=rollouts[i]["reward"] >= config["credit_success_threshold"],
        )
        for i in sorted({i for per in refs.values() for i in per})
    }
    decisive = {i: np.asarray(mask, dtype=bool) for i, (mask, _) in labels.items()}
    scores = score_rollouts(model, tokenizer, rollouts, refs, config=config, temperature=args.temperature)
    forward_s = time.perf_counter() - t_score
    variants = summarize_variants(scores, rollouts, decisive, config, args.random_draws, args.seed)
    kinds = {i: spans[0].kind if spans else "none" for i, (_, spans) in labels.items()}
    breakdown = outcome_breakdown(
        scores, rollouts, decisive, kinds, config, threshold=config["credit_success_threshold"]
    )
    score_s = time.perf_counter() - t_score
    results = {
        "settings": settings,
        "policy": path,
        "num_rollouts": len(rollouts),
        "num_groups": len(groups),
        "num_mixed_groups": len(mixed),
        "llm_reference_stats": llm_stats,
        "reference_sources": {n: sorted({r.source for r in per.values()}) for n, per in refs.items()},
        "variants": variants,
        "breakdown": breakdown,
        "literal_mask_audit": literal_mask_audit(tokenizer, seed=args.seed),
        "wall_s": {
            "sampling_this_call": round(sample_s, 1),
            "scoring_forwards": round(forward_s, 1),
            "scoring_total": round(score_s, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "threads": args.threads,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print()
    print(format_table(results))
    print()
    print(format_breakdown(breakdown))
    audit = results["literal_mask_audit"]
    print(
        f"\nliteral mask on the expert trajectories of {audit['rollouts']} train tasks: "
        f"{audit['eligible_share']:.1%} of a success's {audit['decisive_tokens']} decisive tokens stay eligible"
    )
    print(
        f"{len(mixed)} mixed groups of {len(groups)} ({len(decisive)} rollouts); scoring {score_s:.0f} s "
        f"({args.threads} threads), of which forwards {forward_s:.0f} s -> {args.output}"
    )
    if args.html:
        from credit_figure import write_figure

        write_figure(
            args.html, scores, rollouts, refs, decisive, tokenizer, config=config, policy=settings["policy_name"]
        )
        print(f"picture: {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
