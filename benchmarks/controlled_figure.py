"""The picture of the controlled tier: where credit landed on one failure of each corruption kind.

```bash
python benchmarks/controlled_figure.py outputs/bcc/base_v2_scores.pkl docs/figures/credit_controlled_smollm2.png
```

Reads the divergences saved by `bench_credit_controlled.py` (`<output>_scores.pkl`, same `--groups-per-kind` and
`--seed`), re-runs the default segmenter on them, and draws, per failure, the eligible tokens in order: the divergence
(line), the weight W (bars above 1) and the decisive tokens (red), with the decisive text in the title.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scores", help="the *_scores.pkl of a bench_credit_controlled.py run")
    p.add_argument("output", help="PNG to write")
    p.add_argument("--context", default="contrast")
    p.add_argument("--groups-per-kind", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench_credit_controlled import layout, sgcd_args
    from controlled_metrics import reweigh
    from credit_corruptions import controlled_groups
    from transformers import AutoTokenizer

    from trl_sgcd.tooluse.models import bundled_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir())
    rows, _ = layout(controlled_groups(opts.groups_per_kind, seed=opts.seed), tokenizer)
    with open(opts.scores, "rb") as f:
        scores = pickle.load(f)["scores"][opts.context]
    with tempfile.TemporaryDirectory() as tmp:
        args = sgcd_args(tmp, 0.8, {})
    config = {k: getattr(args, k) for k in vars(args) if k.startswith("credit_")}
    picks = list({r["kind"]: i for i, r in reversed(list(enumerate(rows)))}.items())  # first failure of each kind
    fig, axes = plt.subplots(len(picks), 1, figsize=(12, 2.4 * len(picks)))
    for ax, (kind, i) in zip(np.atleast_1d(axes), picks):
        score, row = scores[i], rows[i]
        e = score["eligible"]
        w, d, dec = reweigh(score, config)[e], score["divergence"][e], row["decisive"][e]
        x = np.arange(e.sum())
        ax.bar(x, w - 1.0, bottom=1.0, color=np.where(dec, "#d62728", "#1f77b4"), width=1.0, label="W (red: decisive)")
        ax.set_ylim(1.0, config["credit_cap"] + 0.05)
        ax.set_ylabel("W")
        twin = ax.twinx()
        twin.plot(x, d, color="#555555", lw=0.8, label="divergence")
        twin.set_ylabel("d (nats)")
        decisive = tokenizer.decode([t for t, m in zip(row["bad_ids"], row["decisive"]) if m]).strip()
        share = float((w > 1).mean())
        ax.set_title(f"{kind}: {row['detail']}  | decisive: {decisive!r}  | W > 1 on {share:.0%}", fontsize=9)
    np.atleast_1d(axes)[-1].set_xlabel("eligible (model-written) tokens of the failed rollout, in order")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(opts.output)), exist_ok=True)
    fig.savefig(opts.output, dpi=110)
    print(f"picture: {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
