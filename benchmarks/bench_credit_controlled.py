"""Where credit lands, controlled tier: gold trajectories and copies with ONE known decisive corruption, scored by the
trainer's own credit pipeline under each teacher context, no sampling and no training.

```bash
python benchmarks/bench_credit_controlled.py                       # base SmolLM2, 6 groups per kind (~9 min, 2 cores)
python benchmarks/bench_credit_controlled.py --policy warm         # the demo's warm start (+ ~10-40 min the 1st time)
python benchmarks/bench_credit_controlled.py --policy tiny-context --groups-per-kind 1   # smoke run (seconds)
```

Groups (`credit_corruptions.py`): per airline TRAIN task, the gold trajectory (success) and a copy with one corruption
(`write_argument`, `tool_name`, `skipped_read`, `final_answer`) replayed on the environment (a verified failure); the
decisive tokens of the failure are the corrupted value, known exactly. Each failure is scored by
`trl_sgcd.credit.pipeline.CreditPipeline.compute_credit` (the trainer's code: teacher prompt with the reference
inserted, spliced ids, literal mask with the prompt and tool mask, dense top-K divergence, segmenter, weights, the
`SGCDConfig` defaults) under each teacher context:

* `contrast`: the default offline reference builder, on the sanitized group (gold values masked as private);
* `oracle`: an upper bound that no sanitizer would let through: the gold calls verbatim and "wrote WRONG where the
  success wrote GOLD";
* `irrelevant`: unrelated text of the same token length (a control: credit must not concentrate);
* `identity`: teacher = student on the first 4 failures (the divergence must be exactly 0).

Metrics over the failures (`trl_sgcd.credit.report.localization`), median over groups with 95% bootstrap intervals: the raw
divergence ratio (mean d on decisive / on other eligible tokens) and its AUC, the share of eligible tokens with W > 1,
the credit-mass lift on decisive tokens against equal-mass random spans, and recall. `--sweep` re-runs the segmenter on
the saved divergences for a grid of settings (how the defaults were chosen; TRAIN tasks only); `--from-scores` re-runs
the segmenter and the metrics on the divergences saved by an earlier run (`<output>_scores.pkl`), without the model.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from controlled_metrics import SWEEP, format_sweep, format_table, reweigh, summarize_context, sweep  # noqa: E402
from credit_corruptions import KINDS, controlled_decisive_mask, controlled_groups, differing_span  # noqa: E402

CONTEXTS = ("contrast", "oracle", "irrelevant", "identity")
IDENTITY_ROWS = 4  # teacher = student is a check (exactly 0), not a measurement: a few rows suffice
IRRELEVANT = (
    "Bread dough rises best in a warm kitchen. Mix flour, water, salt and yeast, knead for ten minutes, and let it "
    "rest under a cloth until it doubles. Shape the loaf, score the top with a sharp knife, and bake it in a hot oven "
    "until the crust is deep brown and the bottom sounds hollow when tapped. Let it cool before slicing. "
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--policy", default="smollm2", help='"smollm2" (base, default), "warm", "tiny-context" or a folder')
    p.add_argument("--groups-per-kind", type=int, default=6, help="groups per corruption kind (train tasks)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--contexts", nargs="+", default=list(CONTEXTS), choices=CONTEXTS, help="teacher contexts to score")
    p.add_argument("--temperature", type=float, default=0.8, help="scoring temperature (the demo's sampling one)")
    p.add_argument("--random-draws", type=int, default=16, help="random-span placements per rollout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="also re-run the segmenter over a grid of settings")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="SGCDConfig overrides, e.g. credit_reset_z=1"
    )
    p.add_argument("--from-scores", default=None, help="re-run the segmenter on the *_scores.pkl of an earlier run")
    p.add_argument("--output", default="outputs/bench_credit_controlled/results.json")
    p.add_argument("--threads", type=int, default=2)
    return p


def policy_dir(name: str) -> str:
    from trl_sgcd.tooluse.models import bundled_model_dir, tiny_context_model_dir, tiny_model_dir
    from trl_sgcd.tooluse.warmstart import WARM_START_DEFAULTS, warm_start

    if name == "warm":
        return warm_start(**WARM_START_DEFAULTS)
    named = {"smollm2": bundled_model_dir, "tiny": tiny_model_dir, "tiny-context": tiny_context_model_dir}
    return named[name]() if name in named else name


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def sgcd_args(output_dir: str, temperature: float, overrides: dict):
    from trl_sgcd import SGCDConfig
    from trl_sgcd.envs.airline import AIRLINE_PRIVATE_COLUMNS

    return SGCDConfig(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        temperature=temperature,
        credit_private_columns=list(AIRLINE_PRIVATE_COLUMNS),
        credit_scoring_batch_size=4,
        **overrides,
    )


# ------------------------------------------------------------------------------------------------------- layout
def layout(groups, tokenizer):
    """Per group: prompt messages, TRL-layout ids of gold and failure, the failure's decisive mask, turn texts."""
    from credit_rollouts import completion_layout
    from transformers.utils import get_json_schema

    from trl_sgcd.envs.airline import AirlineEnv, airline_prompt
    from trl_sgcd.tooluse.evaluation import environment_tools

    schemas = [get_json_schema(t) for t in environment_tools(AirlineEnv())]
    rows = []
    for g in groups:
        prompt = airline_prompt(g["task"])
        p_ids, gold_ids, gold_mask = completion_layout(tokenizer, prompt, g["gold"], schemas)
        _, bad_ids, bad_mask = completion_layout(tokenizer, prompt, g["bad"]["completion"], schemas)
        decisive = controlled_decisive_mask(tokenizer, gold_ids, gold_mask, bad_ids, bad_mask)
        rows.append(
            {**g, "prompt": prompt, "prompt_ids": p_ids, "gold_ids": gold_ids, "gold_mask": gold_mask,
             "bad_ids": bad_ids, "bad_mask": bad_mask, "decisive": np.asarray(decisive)}
        )  # fmt: skip
    return rows, schemas


def oracle_text(row, tokenizer) -> str:
    """The oracle context: the gold calls verbatim and the corrupted value against the gold one (never sanitized)."""
    from trl_sgcd.credit.reference.traces import format_steps, trace_steps

    bad = tokenizer.decode(row["bad_ids"], skip_special_tokens=True)
    gold = tokenizer.decode(row["gold_ids"], skip_special_tokens=True)
    s, e = differing_span(gold, bad)
    gs, ge = differing_span(bad, gold)
    return (
        "## Deviation points\n"
        f"- The failed sibling wrote `{bad[s:e]}` where the successful sibling wrote `{gold[gs:ge]}`.\n\n"
        "## Successful action branches\n" + format_steps(trace_steps(row["gold"]), max_observation_chars=160)
    )


def references(rows, args, tokenizer):
    """`{context: [CreditReference per row]}` for the failures of `rows` (identity: the contrast one, see below)."""
    from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder
    from trl_sgcd.credit.siblings import build_sibling_groups
    from trl_sgcd.credit.types import CreditReference

    prompts, completions, rewards, extra = [], [], [], []
    for r in rows:
        gold_cols = {"gold_actions": r["task"]["gold_actions"], "gold_answer": r["task"].get("gold_answer", "")}
        for completion, reward in ((r["gold"], 1.0), (r["bad"]["completion"], 0.0)):
            prompts.append(r["prompt"])
            completions.append(completion)
            rewards.append(reward)
            extra.append(gold_cols)
    groups = build_sibling_groups(prompts, completions, rewards, extra, num_generations=2, success_threshold=1.0)
    contrast = SiblingReferenceBuilder.from_config(args, tokenizer=tokenizer).build(groups)
    out = {"contrast": contrast, "identity": [ref if i < IDENTITY_ROWS else None for i, ref in enumerate(contrast)]}
    out["oracle"] = [CreditReference(oracle_text(r, tokenizer), {}, [], "oracle") for r in rows]
    irrelevant = []
    for ref in contrast:
        n = len(tokenizer(ref.text, add_special_tokens=False)["input_ids"])
        ids = tokenizer(IRRELEVANT * (1 + n // 40), add_special_tokens=False)["input_ids"][:n]
        irrelevant.append(CreditReference(tokenizer.decode(ids), {}, list(ref.masked_literals), "irrelevant"))
    out["irrelevant"] = irrelevant
    return out


def _pad(rows, value, side):
    width = max(len(r) for r in rows)
    pad = [[value] * (width - len(r)) for r in rows]
    ids = [p + list(r) if side == "left" else list(r) + p for p, r in zip(pad, rows)]
    mask = [[0] * len(p) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * len(p) for p, r in zip(pad, rows)]
    return torch.tensor(ids), torch.tensor(mask)


def score(model, tokenizer, rows, refs, schemas, args) -> dict:
    """Per context: the pipeline's divergence, entropy, eligible mask and weights of every failure (numpy)."""
    from trl_sgcd.credit.pipeline import CreditPipeline
    from trl_sgcd.tooluse.evaluation import render_prompt_ids

    pipe = CreditPipeline(args, tokenizer, num_generations=2)
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = _pad([r["prompt_ids"] for r in rows], pad, "left")
    completion_ids, completion_mask = _pad([r["bad_ids"] for r in rows], pad, "right")
    tool_mask, _ = _pad([r["bad_mask"] for r in rows], 0, "right")
    prompts = [r["prompt"] for r in rows]
    out = {}
    for context, per_row in refs.items():
        if context == "identity":  # the renderer ignores the reference: teacher prompt ids = student prompt ids
            render = lambda ps: [list(r["prompt_ids"]) for r in rows]  # noqa: E731
        else:
            render = lambda ps: [render_prompt_ids(tokenizer, p, schemas) for p in ps]  # noqa: E731
        t0 = time.perf_counter()
        result = pipe.compute_credit(
            model=model,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            tool_mask=tool_mask,
            advantages=-torch.ones(len(rows)),
            prompts=prompts,
            references=per_row,
            render=render,
        )
        if result.fallback_prefix:
            raise RuntimeError(f"{context}: {result.fallback_prefix} teacher prompts used the token-level fallback")
        lengths = [len(r["bad_ids"]) for r in rows]
        out[context] = [
            {
                "divergence": result.scores.divergence[k, :n].float().numpy(),
                "entropy": result.scores.teacher_entropy[k, :n].float().numpy(),
                "eligible": result.eligible[k, :n].numpy().astype(bool),
                "weights": result.weights[i, :n].numpy(),
            }
            for k, (i, n) in enumerate(zip(result.rows, [lengths[i] for i in result.rows]))
        ]
        print(f"[score] {context}: {len(result.rows)} failures in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    opts = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(opts.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    path = policy_dir(opts.policy)
    tokenizer = AutoTokenizer.from_pretrained(path)
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in opts.set)}
    with tempfile.TemporaryDirectory() as tmp:
        args = sgcd_args(tmp, opts.temperature, overrides)
    groups = controlled_groups(opts.groups_per_kind, seed=opts.seed, kinds=opts.kinds)
    rows, schemas = layout(groups, tokenizer)
    refs = references(rows, args, tokenizer)
    config = {f: getattr(args, f) for f in vars(args) if f.startswith("credit_")}
    t_score = time.perf_counter()
    if opts.from_scores:  # the saved divergences of an earlier run; only the segmenter and the metrics run again
        with open(opts.from_scores, "rb") as f:
            saved = pickle.load(f)["scores"]
        opts.contexts = [c for c in opts.contexts if c in saved]
        scores = {c: [{**x, "weights": reweigh(x, config)} for x in saved[c]] for c in opts.contexts}
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        scores = score(model, tokenizer, rows, {c: refs[c] for c in opts.contexts}, schemas, args)
    score_s = time.perf_counter() - t_score
    results = {
        "policy": opts.policy,
        "policy_dir": path,
        "groups": [{"task_id": r["task"]["task_id"], "kind": r["kind"], "detail": r["detail"]} for r in rows],
        "config": {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None},
        "contexts": {
            c: summarize_context(scores[c], rows, draws=opts.random_draws, seed=opts.seed) for c in opts.contexts
        },
        "wall_s": {"scoring": round(score_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "threads": opts.threads,
        "load": os.getloadavg()[0],
    }
    if opts.sweep:
        results["sweep"] = sweep(scores, rows, config, grid=SWEEP, draws=opts.random_draws, seed=opts.seed)
    os.makedirs(os.path.dirname(os.path.abspath(opts.output)), exist_ok=True)
    with open(opts.output, "w") as f:
        json.dump(results, f, indent=1, default=float)
    with open(os.path.splitext(opts.output)[0] + "_scores.pkl", "wb") as f:  # for re-running the segmenter offline
        pickle.dump({"scores": scores, "rows": [{"kind": r["kind"], "decisive": r["decisive"]} for r in rows]}, f)
    print()
    print(format_table(results))
    if opts.sweep:
        print()
        print(format_sweep(results["sweep"]))
    print(
        f"\n{len(rows)} failures ({opts.groups_per_kind} per kind), policy {opts.policy}; scoring {score_s:.0f} s, "
        f"total {time.perf_counter() - t0:.0f} s ({opts.threads} threads, load {os.getloadavg()[0]:.1f}) -> {opts.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
