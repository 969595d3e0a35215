"""`credit_weights`, `uniform_credit_weights`, `apply_credit_weights`: bounds, masks, signs, no gradient."""

import pytest
import torch

from trl_sgcd.credit.weighting.saliency import credit_saliency
from trl_sgcd.credit.weighting.weights import apply_credit_weights, credit_weights, uniform_credit_weights


def _saliency(seed=0, B=5, T=60):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(B, T, generator=g)
    s[s < 0.5] = 0.0
    mask = torch.rand(B, T, generator=g) > 0.2
    return s, mask


@pytest.mark.parametrize("gamma,cap", [(1.0, 2.0), (0.5, 1.2), (3.0, 2.0), (0.0, 1.5), (10.0, 5.0)])
def test_formula_bounds_and_mask(gamma, cap):
    s, mask = _saliency()
    w = credit_weights(s, gamma=gamma, cap=cap, eligible_mask=mask)
    naive = torch.tensor(
        [
            [min(max(1 + gamma * x, 1.0), cap) if e else 1.0 for x, e in zip(rs, rm)]
            for rs, rm in zip(s.tolist(), mask.tolist())
        ]
    )
    torch.testing.assert_close(w, naive)
    assert w.dtype == torch.float32 and (w >= 1).all() and (w <= cap).all() and (w[~mask] == 1).all()


def test_defaults_and_no_mask():
    s = torch.tensor([[0.0, 0.25, 1.0]])
    torch.testing.assert_close(credit_weights(s), torch.tensor([[1.0, 1.25, 2.0]]))
    assert (credit_weights(torch.tensor([[float("nan"), 0.5]])) == torch.tensor([[1.0, 1.5]])).all()


def test_constant_divergence_gives_unit_weights():
    d = torch.full((4, 80), 0.3)
    mask = torch.ones(4, 80, dtype=torch.bool)
    s = credit_saliency(d, torch.rand(4, 80), mask)
    assert (credit_weights(s, eligible_mask=mask) == 1).all()


def test_weights_never_require_grad():
    s = torch.rand(3, 10, requires_grad=True)
    w = credit_weights(s * 1.0, eligible_mask=torch.ones(3, 10))
    assert not w.requires_grad and w.grad_fn is None
    u = uniform_credit_weights(w.requires_grad_(), torch.ones(3, 10))
    assert not u.requires_grad


@pytest.mark.parametrize("seed", range(3))
def test_sign_preserved_and_magnitude_bounded(seed):
    s, mask = _saliency(seed)
    adv = torch.randn(s.size(0), generator=torch.Generator().manual_seed(seed))
    adv[0] = 0.0
    cap = 2.0
    w = credit_weights(s, cap=cap, eligible_mask=mask)
    a_hat = apply_credit_weights(adv, w)
    assert a_hat.shape == s.shape
    assert torch.equal(torch.sign(a_hat), torch.sign(adv)[:, None].expand_as(a_hat))
    assert (a_hat.abs() <= cap * adv.abs()[:, None] + 1e-7).all()
    assert (a_hat.abs() >= adv.abs()[:, None] - 1e-7).all()
    torch.testing.assert_close(a_hat[~mask], adv[:, None].expand_as(a_hat)[~mask])


def test_uniform_weights_keep_the_row_mean():
    s, mask = _saliency(1)
    mask[2] = False  # a row without eligible token
    w = credit_weights(s, eligible_mask=mask)
    u = uniform_credit_weights(w, mask)
    for row in range(s.size(0)):
        m = mask[row]
        if m.any():
            torch.testing.assert_close(u[row, m], w[row, m].mean().expand(int(m.sum())))
            torch.testing.assert_close(u[row, m].sum(), w[row, m].sum())  # same credit mass
        assert (u[row, ~m] == 1).all()
    assert (u[2] == 1).all()


def test_errors_name_the_argument():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="cap"):
        credit_weights(s, cap=1.0)
    with pytest.raises(ValueError, match="gamma"):
        credit_weights(s, gamma=-0.1)
    with pytest.raises(ValueError, match="eligible_mask"):
        credit_weights(s, eligible_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="saliency"):
        credit_weights(torch.zeros(3))
    with pytest.raises(ValueError, match="advantages"):
        apply_credit_weights(torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="eligible_mask"):
        uniform_credit_weights(torch.ones(2, 3), torch.ones(2, 2))
