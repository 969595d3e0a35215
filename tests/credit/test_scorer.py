"""`DenseDivergenceScorer` against a naive full-logit reference on the tiny random Llama: divergences, chunking and
micro-batching, teacher top-k, dtypes, logit scaling and soft-capping, a PEFT LoRA model."""

import pytest
import torch

from tests.credit.scorer_utils import (  # noqa: F401 (_pad_left, _pad_right: imported from here by test_hidden.py)
    TEMPERATURE,
    _args,
    _assert_scores_close,
    _pad_left,
    _pad_right,
    _reorder_atol,
    make_batch,
    naive_scores,
)
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer, DenseScores


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_matches_naive_full_logits(model, divergence):
    batch = make_batch()
    scores = DenseDivergenceScorer(top_k=8, divergence=divergence, chunk_size=5, temperature=TEMPERATURE).score(
        model, *_args(batch)
    )
    ref = naive_scores(model, batch, top_k=8, divergence=divergence)
    assert isinstance(scores, DenseScores)
    assert scores.divergence.dtype == torch.float32 and scores.divergence.shape == batch["completion_ids"].shape
    assert ref["divergence"][batch["completion_mask"].bool()].max() > 1e-2  # the test is not vacuous
    _assert_scores_close(scores, ref)
    off = ~batch["completion_mask"].bool()
    for field in ("divergence", "teacher_entropy", "student_logprobs", "teacher_logprobs"):
        assert (getattr(scores, field)[off] == 0).all()


def test_chunked_equals_unchunked_and_microbatched(model):
    batch = make_batch(seed=1)
    n_tokens = int(batch["completion_mask"].sum())
    outs = [
        DenseDivergenceScorer(top_k=4, chunk_size=c, temperature=TEMPERATURE, batch_size=b).score(
            model, *_args(batch), return_teacher_topk=True
        )
        for c, b in ((1, None), (7, None), (n_tokens + 10, None), (3, 1), (7, 2))
    ]
    atol = _reorder_atol(model, batch)
    assert atol < 1e-4 and outs[0].divergence.max() > 0.1  # far below the scores compared: the test is not vacuous
    for other in outs[1:]:
        for field in (
            "divergence",
            "teacher_entropy",
            "student_logprobs",
            "teacher_logprobs",
            "teacher_topk_logprobs",
        ):
            torch.testing.assert_close(getattr(other, field), getattr(outs[0], field), atol=atol, rtol=0)
        assert torch.equal(other.teacher_topk_ids, outs[0].teacher_topk_ids)


def test_teacher_topk_matches_full_logits(model):
    batch = make_batch(seed=2)
    scores = DenseDivergenceScorer(top_k=5, temperature=TEMPERATURE).score(
        model, *_args(batch), return_teacher_topk=True
    )
    T = batch["completion_ids"].size(1)
    with torch.no_grad():
        t = model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
    log_q = torch.log_softmax(t[:, -T - 1 : -1] / TEMPERATURE, -1)  # (B, T, V)
    top = log_q.topk(5, dim=-1)
    mask = batch["completion_mask"].bool()
    assert scores.teacher_topk_ids.shape == (*mask.shape, 5) and scores.teacher_topk_ids.dtype == torch.long
    assert torch.equal(scores.teacher_topk_ids[mask], top.indices[mask])
    torch.testing.assert_close(scores.teacher_topk_logprobs[mask], top.values[mask], atol=2e-5, rtol=1e-5)
    assert (scores.teacher_topk_logprobs[~mask] == 0).all() and (scores.teacher_topk_ids[~mask] == 0).all()
    assert DenseDivergenceScorer().score(model, *_args(batch)).teacher_topk_ids is None


def test_student_equals_teacher_gives_zero(model):
    batch = make_batch(same=True)
    scores = DenseDivergenceScorer(top_k=8, chunk_size=4).score(model, *_args(batch))
    mask = batch["completion_mask"].bool()
    assert scores.divergence.abs().max() < 1e-5
    assert (scores.teacher_entropy[mask] > 0).all()
    torch.testing.assert_close(scores.student_logprobs, scores.teacher_logprobs)


def test_bfloat16_model(model):
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)
    batch = make_batch(seed=12)
    scorer = DenseDivergenceScorer(top_k=8, chunk_size=5, temperature=TEMPERATURE)
    scores, reference = scorer.score(half, *_args(batch)), scorer.score(model, *_args(batch))
    mask = batch["completion_mask"].bool()
    assert scores.divergence.dtype == scores.student_logprobs.dtype == torch.float32
    assert torch.isfinite(scores.divergence).all() and (scores.divergence >= 0).all()
    torch.testing.assert_close(scores.student_logprobs[mask], reference.student_logprobs[mask], atol=0.15, rtol=0.05)
    same = scorer.score(half, *_args(make_batch(seed=12, same=True)))
    assert same.divergence.abs().max() < 1e-5


def test_logit_scale_and_softcapping_follow_the_config(model):
    batch = make_batch(seed=4)
    config = model.config
    try:
        config.logit_scale, config.final_logit_softcapping = 0.5, 3.0  # Llama's forward ignores both; TRL reads them
        scores = DenseDivergenceScorer(top_k=4, temperature=TEMPERATURE).score(model, *_args(batch))
    finally:
        del config.logit_scale
        del config.final_logit_softcapping
    T = batch["completion_ids"].size(1)
    with torch.no_grad():
        s = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
    z = 3.0 * torch.tanh(s[:, -T - 1 : -1] * 0.5 / 3.0) / TEMPERATURE  # (B, T, V)
    mask = batch["completion_mask"].bool()
    ref = torch.log_softmax(z, -1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    torch.testing.assert_close(scores.student_logprobs[mask], ref[mask], atol=2e-5, rtol=1e-5)


def test_peft_lora_model(model):
    peft = pytest.importorskip("peft")
    import copy

    torch.manual_seed(0)  # the random LoRA init: an unseeded draw can leave near-ties in the teacher's top-k
    lora = peft.get_peft_model(
        copy.deepcopy(model),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    batch = make_batch(seed=5)
    scores = DenseDivergenceScorer(top_k=6, chunk_size=3, temperature=TEMPERATURE).score(lora, *_args(batch))
    _assert_scores_close(scores, naive_scores(lora, batch, top_k=6))
    with lora.disable_adapter():  # the LoRA layers are active while scoring: the base model scores differently
        base = naive_scores(lora, batch, top_k=6)
    assert not torch.allclose(scores.student_logprobs, base["student_lp"], atol=1e-4)
