"""`DenseDivergenceScorer` arguments: batch layout and parameter errors, and construction from TRL / SGCD configs."""

import types

import pytest

from tests.credit.scorer_utils import _args, make_batch
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer


def test_layout_errors(model):
    batch = make_batch()
    scorer = DenseDivergenceScorer()
    bad = dict(batch, teacher_input_ids=batch["teacher_input_ids"].clone())
    bad["teacher_input_ids"][0, -1] += 1
    with pytest.raises(ValueError, match="teacher_input_ids"):
        scorer.score(model, *_args(bad))
    with pytest.raises(ValueError, match="completion_mask"):
        scorer.score(model, *_args(dict(batch, completion_mask=batch["completion_mask"][:, :-1])))
    with pytest.raises(ValueError, match="student_input_ids"):
        scorer.score(
            model,
            *_args(
                dict(batch, student_input_ids=batch["completion_ids"], student_attention_mask=batch["completion_mask"])
            ),
        )
    for kwargs, name in (
        ({"top_k": 0}, "top_k"),
        ({"divergence": "x"}, "divergence"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(ValueError, match=name):
            DenseDivergenceScorer(**kwargs)


def test_from_config():
    args = types.SimpleNamespace(
        credit_top_k=7,
        credit_divergence="jsd",
        credit_chunk_size=9,
        temperature=0.9,
        credit_scoring_batch_size=None,
        per_device_train_batch_size=4,
        credit_share_prefix=False,
    )
    scorer = DenseDivergenceScorer.from_config(args)
    assert not scorer.share_prefix
    assert (scorer.top_k, scorer.divergence, scorer.chunk_size, scorer.temperature, scorer.batch_size) == (
        7,
        "jsd",
        9,
        0.9,
        4,
    )
    args.credit_scoring_batch_size, args.credit_share_prefix = 2, True
    assert (
        DenseDivergenceScorer.from_config(args).batch_size == 2
        and DenseDivergenceScorer.from_config(args).share_prefix
    )


def test_from_sgcd_config(tmp_path):
    from trl_sgcd.config import DIVERGENCES, SGCDConfig
    from trl_sgcd.credit.scoring import divergence

    assert divergence.DIVERGENCES == DIVERGENCES
    config = SGCDConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=4,
        credit_top_k=7,
        credit_chunk_size=9,
        credit_divergence="forward_kl",
        temperature=0.8,
        report_to=[],
    )
    scorer = DenseDivergenceScorer.from_config(config)
    assert (scorer.top_k, scorer.divergence, scorer.chunk_size, scorer.temperature, scorer.batch_size) == (
        7,
        "forward_kl",
        9,
        0.8,
        4,
    )
    assert (
        scorer.share_prefix and DenseDivergenceScorer().share_prefix is False
    )  # config default on, class default off
