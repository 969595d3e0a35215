"""Appendix A of the paper, checked numerically: Propositions 1-2 and Corollaries 1-3.

The SGCD token loss is TRL's clipped surrogate fed with A * W instead of A:
    l_SGCD(z) = -min(r_z A W_z, clip(r_z, 1-eps, 1+eps) A W_z),   l_GRPO(z) = -min(r_z A, clip(r_z) A).
The first test drives TRL's own loss (`GRPOTrainer._compute_loss` of a tiny `SGCDTrainer`) with the advantages the
credit pipeline hands it; the others check the algebra on a toy parameter and the tiny model.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.credit.test_scorer import _args, make_batch
from trl_sgcd.credit.scoring.divergence import topk_divergence
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer
from trl_sgcd.credit.weighting.saliency import credit_saliency
from trl_sgcd.credit.weighting.weights import apply_credit_weights, credit_weights

EPS = 0.2
CAP = 2.0


def test_trls_loss_weights_each_token_by_w(tmp_path, tiny_model_path, tokenizer):
    """Proposition 2 through TRL's real loss: with the pipeline's advantages, TRL's loss is sum_z W_z l_GRPO(z), each
    token's GRPO term (TRL's loss with only that token's advantage) scaled by its weight, clipped tokens included."""
    from tests.credit.test_pipeline import _batch, _render
    from tests.trainer_utils import tiny_args, toy_dataset, toy_reward
    from trl_sgcd import SGCDTrainer
    from trl_sgcd.credit.weighting.weights import loss_mask

    args = tiny_args(tmp_path, loss_type="dapo", epsilon=EPS)
    trainer = SGCDTrainer(tiny_model_path, toy_reward, args, train_dataset=toy_dataset(4))
    model, pipe = trainer.model, trainer.credit_pipeline
    t, prompts, refs = _batch(tokenizer)
    with torch.no_grad():
        result = pipe.compute_credit(model=model, **t, prompts=prompts, references=refs, render=_render(tokenizer))
    w, mask = result.weights, loss_mask(t["completion_mask"], t["tool_mask"]).bool()
    assert (w[mask] > 1).any() and (w[mask] == 1).any()
    T = t["completion_ids"].size(1)
    ids = torch.cat([t["prompt_ids"], t["completion_ids"]], 1)
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(
            model, ids, torch.cat([t["prompt_mask"], t["completion_mask"]], 1), T
        )[0]
    old = logps + torch.randn(logps.shape, generator=torch.Generator().manual_seed(0)) * 0.5  # clip on both sides
    ratio = (logps - old).exp()[mask]
    assert (ratio < 1 - EPS).any() and (ratio > 1 + EPS).any() and ((ratio - 1).abs() < EPS).any()
    inputs = {**t, "old_per_token_logps": old, "num_items_in_batch": mask.sum()}

    def trl_loss(advantages):
        with torch.no_grad():
            return trainer._compute_loss(model, {**inputs, "advantages": advantages})

    sgcd = trl_loss(result.advantages)  # what the trainer hands TRL
    a = t["advantages"][:, None].expand(-1, T)  # (B, T)
    per_token = {
        (b, z): trl_loss(a * F.one_hot(torch.tensor(b * T + z), a.numel()).view_as(a))
        for b, z in mask.nonzero().tolist()
    }
    weighted = sum(w[b, z] * loss for (b, z), loss in per_token.items())
    torch.testing.assert_close(sgcd, weighted, atol=1e-6, rtol=1e-5)
    grpo = sum(per_token.values())
    torch.testing.assert_close(trl_loss(t["advantages"]), grpo, atol=1e-6, rtol=1e-5)  # W = 1: GRPO's own loss
    assert (sgcd - grpo).abs() > 1e-3  # W reached the loss


def surrogate(logp, old_logp, advantages):
    """Per-token clipped surrogate loss, as TRL computes it; `advantages` is (B,) or (B, T)."""
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    return -torch.min(ratio * adv, torch.clamp(ratio, 1 - EPS, 1 + EPS) * adv)  # (B, T)


def _weights(B, T, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(B, T, generator=g) ** 5 * 3
    h = torch.rand(B, T, generator=g) * 0.2
    d.requires_grad_(requires_grad)
    h.requires_grad_(requires_grad)
    mask = torch.ones(B, T, dtype=torch.bool)
    w = credit_weights(credit_saliency(d, h, mask), gamma=1.0, cap=CAP, eligible_mask=mask)
    assert (w > 1).any() and (w == 1).any()  # both weighted and unweighted tokens
    return w, d, h


def _toy_problem(seed=0, B=4, T=24, V=11, D=5):
    """logp_z(theta) = log softmax(X_z theta)[y_z] with a toy parameter theta (D, V)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(D, V, generator=g, requires_grad=True)
    x = torch.randn(B, T, D, generator=g)
    y = torch.randint(0, V, (B, T), generator=g)

    def logp_fn():
        return torch.log_softmax(x @ theta, -1).gather(-1, y[..., None]).squeeze(-1)  # (B, T)

    # Old log-probs spread so that ratios land inside and on both sides of the clip range.
    old = (logp_fn() + torch.randn(B, T, generator=g) * 0.4).detach()
    adv = torch.tensor([1.3, -0.7, 0.4, -2.0][:B])
    return theta, logp_fn, old, adv


def _token_grads(loss, params):
    """Gradient of each token's loss, flattened: list over tokens of (P,) vectors."""
    flat = loss.reshape(-1)
    grads = []
    for i in range(flat.numel()):
        g = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params)]))
    return grads


def test_proposition2_toy_parameter_tokenwise():
    theta, logp_fn, old, adv = _toy_problem()
    w, _, _ = _weights(*old.shape)
    logp = logp_fn()
    l_sgcd = surrogate(logp, old, apply_credit_weights(adv, w))  # (B, T)
    l_grpo = surrogate(logp, old, adv)  # (B, T)
    torch.testing.assert_close(l_sgcd, w * l_grpo)  # the loss itself is W times the GRPO loss
    ratio = torch.exp(logp - old)
    assert ((ratio < 1 - EPS) | (ratio > 1 + EPS)).any() and ((ratio > 1 - EPS) & (ratio < 1 + EPS)).any()
    g_sgcd, g_grpo = _token_grads(l_sgcd, [theta]), _token_grads(l_grpo, [theta])
    for gs, gg, wz in zip(g_sgcd, g_grpo, w.reshape(-1)):
        torch.testing.assert_close(gs, wz * gg, atol=1e-6, rtol=1e-5)
    # Summed over the batch, too (what the optimizer sees).
    total = torch.autograd.grad(l_sgcd.sum(), theta, retain_graph=True)[0]
    torch.testing.assert_close(total, torch.autograd.grad((w * l_grpo).sum(), theta)[0], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)
    return model


def test_proposition2_on_the_tiny_model(model):
    batch = make_batch(seed=11)
    # W from the real pipeline: dense scores of the current policy -> saliency -> weights.
    scores = DenseDivergenceScorer(top_k=8).score(model, *_args(batch))
    mask = batch["completion_mask"].bool()
    s = credit_saliency(scores.divergence, scores.teacher_entropy, mask, spike_z=1.0)
    w = credit_weights(s, cap=CAP, eligible_mask=mask)  # (B, T)
    assert (w > 1).any()
    T = mask.size(1)
    logits = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
    logp = torch.log_softmax(logits[:, -T - 1 : -1], -1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    old = (logp + torch.randn(logp.shape, generator=torch.Generator().manual_seed(0)) * 0.3).detach()
    adv = torch.tensor([0.8, -1.1, 0.5])
    l_sgcd = surrogate(logp, old, apply_credit_weights(adv, w)) * mask
    l_grpo = surrogate(logp, old, adv) * mask
    params = [model.model.layers[1].mlp.down_proj.weight, model.model.embed_tokens.weight]
    g_sgcd = torch.autograd.grad(l_sgcd.sum(), params, retain_graph=True)
    g_ref = torch.autograd.grad((w * l_grpo).sum(), params, retain_graph=True)
    for a, b in zip(g_sgcd, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        assert a.abs().sum() > 0
    # Tokenwise on a few weighted and unweighted tokens.
    picks = [tuple(x) for x in (w > 1).nonzero()[:3].tolist()] + [
        tuple(x) for x in ((w == 1) & mask).nonzero()[:2].tolist()
    ]
    for b, t in picks:
        gs = torch.autograd.grad(l_sgcd[b, t], params[0], retain_graph=True)[0]
        gg = torch.autograd.grad(l_grpo[b, t], params[0], retain_graph=True)[0]
        torch.testing.assert_close(gs, w[b, t] * gg, atol=1e-7, rtol=1e-4)


def test_proposition1_no_gradient_reaches_features_or_weights(model):
    # Features computed from tensors that require grad: still, W is a constant and nothing flows back into them.
    logits_s = torch.randn(30, 50, requires_grad=True)
    logits_t = torch.randn(30, 50, requires_grad=True)
    d, h = topk_divergence(logits_s, logits_t, torch.randint(0, 50, (30,)), top_k=5)
    d, h = d.reshape(3, 10), h.reshape(3, 10)
    s = credit_saliency(d, h, torch.ones(3, 10))
    w = credit_weights(s)
    assert not s.requires_grad and not w.requires_grad
    theta, logp_fn, old, adv = _toy_problem(B=3, T=10)
    loss = surrogate(logp_fn(), old, apply_credit_weights(adv[:3], w)).sum()
    grads = torch.autograd.grad(loss, [theta, logits_s, logits_t], allow_unused=True)
    assert grads[0] is not None and grads[1] is None and grads[2] is None
    # The scorer's features never carry a graph, even with a model in train mode whose parameters require grad.
    model.train()
    try:
        scores = DenseDivergenceScorer(top_k=4).score(model, *_args(make_batch()))
    finally:
        model.eval()
    assert not scores.divergence.requires_grad and not scores.teacher_entropy.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_corollaries_1_to_3_numerically():
    theta, logp_fn, old, adv = _toy_problem(seed=3)
    w, _, _ = _weights(*old.shape, seed=3)
    a_hat = apply_credit_weights(adv, w)
    # Corollary 1: sign preservation and |A_hat| <= c |A|.
    assert torch.equal(torch.sign(a_hat), torch.sign(adv)[:, None].expand_as(a_hat))
    assert (a_hat.abs() <= CAP * adv.abs()[:, None]).all()
    logp = logp_fn()
    l_sgcd, l_grpo = surrogate(logp, old, a_hat), surrogate(logp, old, adv)
    g_sgcd, g_grpo = _token_grads(l_sgcd, [theta]), _token_grads(l_grpo, [theta])
    norms = []
    for gs, gg, wz, ls, lg in zip(g_sgcd, g_grpo, w.reshape(-1), l_sgcd.reshape(-1), l_grpo.reshape(-1)):
        # Corollary 2: <grad SGCD, grad GRPO> = W ||grad GRPO||^2 >= 0.
        inner = torch.dot(gs, gg)
        torch.testing.assert_close(inner, wz * gg.pow(2).sum(), atol=1e-6, rtol=1e-5)
        assert inner >= 0
        # Corollary 3 (tokenwise): |l_SGCD| <= c |l_GRPO|, ||grad l_SGCD|| <= c ||grad l_GRPO||.
        assert ls.abs() <= CAP * lg.abs() + 1e-6
        assert gs.norm() <= CAP * gg.norm() + 1e-6
        norms.append(gg.norm())
    # Corollary 3 (batch): ||grad L_SGCD|| <= c * sum_z ||grad l_GRPO(z)||.
    total = torch.autograd.grad(l_sgcd.sum(), theta)[0]
    assert total.norm() <= CAP * torch.stack(norms).sum()
