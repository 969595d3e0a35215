"""`teacher_matching_loss` on the scorer's teacher top-k: equal to a naive full-logit loss with its gradient, zero when
the teacher is the student, and an all-masked batch still backpropagates."""

import torch

from tests.credit.scorer_utils import TEMPERATURE, _args, make_batch
from trl_sgcd.credit.scoring.distill_losses import teacher_matching_loss
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer


def naive_teacher_matching_loss(model, batch, topk_ids, topk_logprobs, temperature):
    T = batch["completion_ids"].size(1)
    logits = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
    log_p = torch.log_softmax(logits[:, -T - 1 : -1] / temperature, -1)  # (B, T, V)
    mask = batch["completion_mask"].bool()
    total = 0.0
    for b, t in mask.nonzero().tolist():
        ids, lq = topk_ids[b, t], topk_logprobs[b, t]
        p = log_p[b, t].exp()
        p_tail = (1 - p[ids].sum()).clamp(min=1e-30)
        q_tail = (1 - lq.exp().sum()).clamp(min=1e-30)
        total = total + (lq.exp() * (lq - log_p[b, t, ids])).sum() + q_tail * (q_tail.log() - p_tail.log())
    return total / mask.sum()


def test_teacher_matching_loss_matches_naive_with_gradient(model):
    batch = make_batch(seed=9)
    scores = DenseDivergenceScorer(top_k=6, temperature=TEMPERATURE).score(
        model, *_args(batch), return_teacher_topk=True
    )
    model.zero_grad()
    loss = teacher_matching_loss(
        model,
        batch["student_input_ids"],
        batch["student_attention_mask"],
        batch["completion_mask"],
        scores.teacher_topk_ids,
        scores.teacher_topk_logprobs,
        temperature=TEMPERATURE,
        chunk_size=4,
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = naive_teacher_matching_loss(model, batch, scores.teacher_topk_ids, scores.teacher_topk_logprobs, TEMPERATURE)
    ref.backward()
    assert loss.item() > 1e-3
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-4)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert grads[q_proj].abs().sum() > 0 and grads["model.embed_tokens.weight"].abs().sum() > 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-3)
    model.zero_grad(set_to_none=True)


def test_teacher_matching_loss_zero_when_teacher_is_student(model):
    batch = make_batch(seed=10, same=True)
    scores = DenseDivergenceScorer(top_k=6).score(model, *_args(batch), return_teacher_topk=True)
    loss = teacher_matching_loss(
        model,
        batch["student_input_ids"],
        batch["student_attention_mask"],
        batch["completion_mask"],
        scores.teacher_topk_ids,
        scores.teacher_topk_logprobs,
        temperature=1.0,
        chunk_size=5,
    )
    assert loss.requires_grad and abs(loss.item()) < 1e-5
    empty_mask = torch.zeros_like(batch["completion_mask"])
    zero = teacher_matching_loss(
        model,
        batch["student_input_ids"],
        batch["student_attention_mask"],
        empty_mask,
        scores.teacher_topk_ids,
        scores.teacher_topk_logprobs,
        temperature=1.0,
        chunk_size=5,
    )
    zero.backward()  # an all-masked batch still backpropagates (every rank runs the same graph)
    assert zero.item() == 0.0
    model.zero_grad(set_to_none=True)
