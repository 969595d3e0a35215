"""What scoring does to the model and how it runs its forwards: train/eval mode restored and no dropout while scoring,
`min_batches` padding with dummy forwards, no gradient and no full (B, L, V) logits."""

import pytest
import torch
import torch.nn.functional as F

from tests.credit.scorer_utils import TEMPERATURE, _args, _assert_scores_close, make_batch, naive_scores
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer


@pytest.mark.parametrize("training", [True, False])
def test_restores_mode_and_scores_without_dropout(model, training):
    batch = make_batch(seed=6)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    seen = []
    hook = model.model.register_forward_pre_hook(lambda m, a, k: seen.append(m.training), with_kwargs=True)
    try:
        model.train(training)
        model.model.layers[0].train(not training)  # a submodule in the other mode keeps it
        scorer = DenseDivergenceScorer(top_k=4, temperature=TEMPERATURE)
        first, second = scorer.score(model, *_args(batch)), scorer.score(model, *_args(batch))
        assert model.training is training and model.model.layers[1].training is training
        assert model.model.layers[0].training is (not training)
    finally:
        hook.remove()
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.0
        model.eval()
    assert seen and not any(seen)
    assert torch.equal(first.divergence, second.divergence)
    _assert_scores_close(first, naive_scores(model, batch, top_k=4))


def test_min_batches_pads_forwards(model):
    batch = make_batch(seed=7)  # 3 rows
    calls = []
    hook = model.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        scorer = DenseDivergenceScorer(top_k=4, batch_size=2)
        assert scorer.num_batches(3) == 2 and scorer.num_batches(0) == 0
        assert DenseDivergenceScorer().num_batches(3) == 1
        out = scorer.score(model, *_args(batch))
        assert out.num_forwards == len(calls) == 4
        calls.clear()
        padded = scorer.score(model, *_args(batch), min_batches=5)
        assert padded.num_forwards == len(calls) == 10
        torch.testing.assert_close(padded.divergence, out.divergence)
        calls.clear()
        empty = {k: v[:0] for k, v in batch.items()}
        none = scorer.score(model, *_args(empty), min_batches=3, return_teacher_topk=True)
        assert none.num_forwards == len(calls) == 6
        assert none.divergence.shape == (0, batch["completion_ids"].size(1))
        assert none.teacher_topk_ids.shape == (0, batch["completion_ids"].size(1), 4)
        calls.clear()
        # A rank with no row to score: the spliced teacher batch can be (0, 0); it still pads the forwards.
        empty.update(
            teacher_input_ids=torch.zeros(0, 0, dtype=torch.long),
            teacher_attention_mask=torch.zeros(0, 0, dtype=torch.long),
        )
        assert scorer.score(model, *_args(empty), min_batches=2).num_forwards == len(calls) == 4
    finally:
        hook.remove()


def test_no_gradient_and_no_full_logits(model, monkeypatch):
    batch = make_batch(seed=8)
    model.train()
    head_rows, full_calls = [], []
    real_linear = F.linear
    head_weight = model.get_output_embeddings().weight

    def recording_linear(x, weight, bias=None):
        if weight is head_weight:
            head_rows.append(x.reshape(-1, x.size(-1)).size(0))
        return real_linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    hook = model.register_forward_pre_hook(lambda *a: full_calls.append(1))  # the CausalLM forward: (B, L, V) logits
    try:
        scores = DenseDivergenceScorer(top_k=4, chunk_size=3).score(model, *_args(batch))
    finally:
        hook.remove()
        model.eval()
    n_tokens = int(batch["completion_mask"].sum())
    assert not full_calls
    assert max(head_rows) <= 3 and sum(head_rows) == 2 * n_tokens  # only completion positions, chunk by chunk
    assert all(p.grad is None for p in model.parameters())
    assert not scores.divergence.requires_grad and not scores.student_logprobs.requires_grad
