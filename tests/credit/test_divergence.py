"""`topk_divergence` against plain, loop-based reference implementations (full vocabulary and top-K plus tail)."""

import math

import pytest
import torch

from trl_sgcd.credit.scoring.divergence import DIVERGENCES, topk_divergence, topk_support

EPS = 1e-12


def _kl(a, b):
    """sum_i a_i log(a_i / b_i), with 0 log 0 = 0, on plain Python floats."""
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def _div(p, q, divergence):
    if divergence == "reverse_kl":
        return _kl(p, q)
    if divergence == "forward_kl":
        return _kl(q, p)
    m = [(x + y) / 2 for x, y in zip(p, q)]
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def _entropy(q):
    return -sum(x * math.log(x) for x in q if x > 0)


def naive_full_divergence(student_logits, teacher_logits, divergence):
    """Full-vocabulary divergence and teacher entropy, one row at a time, in float64 Python arithmetic."""
    divs, ents = [], []
    for a, b in zip(student_logits.double().tolist(), teacher_logits.double().tolist()):
        za, zb = sum(math.exp(x) for x in a), sum(math.exp(x) for x in b)
        p = [math.exp(x) / za for x in a]
        q = [math.exp(x) / zb for x in b]
        divs.append(_div(p, q, divergence))
        ents.append(_entropy(q))
    return torch.tensor(divs), torch.tensor(ents)


def naive_topk_divergence(student_logits, teacher_logits, observed_ids, *, top_k, divergence):
    """Top-K-plus-tail divergence written as in the paper: S = teacher top-K + observed; tail = 1 - sum_S, clamped."""
    divs, ents = [], []
    k = min(top_k, teacher_logits.size(-1))
    top = torch.topk(teacher_logits.float(), k, dim=-1).indices.tolist()
    for a, b, ids, obs in zip(
        student_logits.double().tolist(), teacher_logits.double().tolist(), top, observed_ids.tolist()
    ):
        support = list(ids) + ([obs] if obs not in ids else [])
        ma, mb = max(a), max(b)
        za, zb = sum(math.exp(x - ma) for x in a), sum(math.exp(x - mb) for x in b)
        p = [math.exp(a[i] - ma) / za for i in support]
        q = [math.exp(b[i] - mb) / zb for i in support]
        if len(support) < len(a):  # a tail bucket exists
            p.append(max(1.0 - sum(p), EPS))
            q.append(max(1.0 - sum(q), EPS))
        divs.append(_div(p, q, divergence))
        ents.append(_entropy(q))
    return torch.tensor(divs), torch.tensor(ents)


def _inputs(n, v, *, dtype, observed, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bfloat16:  # distinct values exactly representable in bf16: no ties at the top-K boundary
        student = torch.stack([torch.randperm(v, generator=g) for _ in range(n)]).float() / (v / 6)
        teacher = torch.stack([torch.randperm(v, generator=g) for _ in range(n)]).float() / (v / 6)
    else:
        student = torch.randn(n, v, generator=g) * 2
        teacher = student + torch.randn(n, v, generator=g)  # related, like the same policy in two contexts
    student, teacher = student.to(dtype), teacher.to(dtype)
    if observed == "inside":
        ids = teacher.float().argmax(dim=-1)
    else:
        ids = teacher.float().argmin(dim=-1)
    return student, teacher, ids


SHAPES = [(1, 7), (6, 50), (9, 200)]


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extra_k", [0, 5])
def test_full_vocabulary_when_k_covers_v(divergence, shape, extra_k):
    n, v = shape
    student, teacher, ids = _inputs(n, v, dtype=torch.float32, observed="outside")
    div, ent = topk_divergence(student, teacher, ids, top_k=v + extra_k, divergence=divergence)
    ref_div, ref_ent = naive_full_divergence(student, teacher, divergence)
    assert div.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(div, ref_div.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("top_k", [1, 3, 8])
@pytest.mark.parametrize("observed", ["inside", "outside"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_plus_tail_matches_naive(divergence, shape, top_k, observed, dtype):
    n, v = shape
    student, teacher, ids = _inputs(n, v, dtype=dtype, observed=observed, seed=top_k)
    div, ent = topk_divergence(student, teacher, ids, top_k=top_k, divergence=divergence)
    ref_div, ref_ent = naive_topk_divergence(student, teacher, ids, top_k=top_k, divergence=divergence)
    tol = 1e-5 if dtype == torch.float32 else 1e-4  # bf16 inputs are exact in fp32; only reduction order differs
    torch.testing.assert_close(div, ref_div.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(ent, ref_ent.float(), atol=tol, rtol=tol)


def test_support_adds_observed_token_once():
    teacher = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    ids, valid = topk_support(teacher, torch.tensor([1, 4]), top_k=2)
    assert ids.tolist() == [[0, 1, 1], [0, 1, 4]]
    assert valid.tolist() == [[True, True, False], [True, True, True]]


def test_observed_token_changes_the_support():
    student, teacher, _ = _inputs(4, 30, dtype=torch.float32, observed="inside")
    inside = teacher.argmax(-1)
    outside = teacher.argmin(-1)
    d_in, _ = topk_divergence(student, teacher, inside, top_k=3)
    d_out, _ = topk_divergence(student, teacher, outside, top_k=3)
    assert not torch.allclose(d_in, d_out)


def _extreme_cases(v=40):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, v, generator=g)
    masked = base.clone()
    masked[:, ::3] = float("-inf")
    only_topk = torch.full((4, v), float("-inf"))
    only_topk[:, :2] = torch.tensor([3.0, 1.0])  # the teacher puts no mass outside its top-2: q_tail = 0
    return {
        "masked_student": (masked, base),
        "masked_teacher": (base, masked),
        "masked_both": (masked, masked.flip(-1)),
        "teacher_zero_tail": (base, only_topk),
        "student_zero_tail": (only_topk, base),
        "peaked": (base * 1e4, base.flip(-1) * 1e4),
        "peaked_same": (base * 1e4, base * 1e4),
        "uniform": (torch.zeros(4, v), torch.zeros(4, v)),
        "uniform_vs_peaked": (torch.zeros(4, v), base * 1e3),
        "huge_logits": (base + 1e6, base - 1e6),
    }


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("case", list(_extreme_cases()))
@pytest.mark.parametrize("top_k", [1, 4, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_finite_and_nonnegative(divergence, case, top_k, dtype):
    student, teacher = _extreme_cases()[case]
    ids = torch.tensor([0, 1, 5, 39])
    div, ent = topk_divergence(student.to(dtype), teacher.to(dtype), ids, top_k=top_k, divergence=divergence)
    assert torch.isfinite(div).all() and torch.isfinite(ent).all()
    assert (div >= 0).all() and (ent >= 0).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_identical_distributions_give_zero(divergence):
    student, _, ids = _inputs(8, 100, dtype=torch.float32, observed="outside")
    for top_k in (1, 5, 100):
        div, ent = topk_divergence(student, student.clone(), ids, top_k=top_k, divergence=divergence)
        torch.testing.assert_close(div, torch.zeros(8), atol=1e-6, rtol=0)
        assert (ent > 0).all()


def test_uniform_teacher_entropy_is_log_v():
    _, ent = topk_divergence(torch.zeros(2, 64), torch.zeros(2, 64), torch.tensor([0, 63]), top_k=64)
    torch.testing.assert_close(ent, torch.full((2,), math.log(64)))
    _, ent_k = topk_divergence(torch.zeros(2, 64), torch.zeros(2, 64), torch.tensor([0, 63]), top_k=4)
    assert (ent_k < ent).all()  # the tail bucket merges tokens, so the support entropy is smaller


def test_masked_support_against_naive_with_masked_student():
    # -inf in the student (p_i = 0) is handled exactly: 0 log 0 = 0 in reverse KL.
    student, teacher, ids = _inputs(5, 30, dtype=torch.float32, observed="outside")
    student[:, 5:10] = float("-inf")
    div, _ = topk_divergence(student, teacher, ids, top_k=30, divergence="reverse_kl")
    p = torch.softmax(student.double(), -1)
    log_ratio = torch.log_softmax(student.double(), -1) - torch.log_softmax(teacher.double(), -1)
    ref = torch.where(p > 0, p * log_ratio, torch.zeros_like(p)).sum(-1)
    torch.testing.assert_close(div, ref.float(), atol=1e-5, rtol=1e-5)


def test_inputs_unchanged():
    student, teacher, ids = _inputs(3, 20, dtype=torch.float32, observed="inside")
    s0, t0 = student.clone(), teacher.clone()
    topk_divergence(student, teacher, ids, top_k=4)
    assert torch.equal(student, s0) and torch.equal(teacher, t0)


def test_errors_name_the_argument():
    x, ids = torch.zeros(2, 5), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="divergence"):
        topk_divergence(x, x, ids, top_k=2, divergence="kl")
    with pytest.raises(ValueError, match="top_k"):
        topk_divergence(x, x, ids, top_k=0)
    with pytest.raises(ValueError, match="teacher_logits"):
        topk_divergence(x, torch.zeros(2, 6), ids, top_k=2)
    with pytest.raises(ValueError, match="observed_ids"):
        topk_divergence(x, x, torch.zeros(3, dtype=torch.long), top_k=2)


def test_the_teacher_tail_is_summed_not_one_minus_the_top_k():
    """The extra losses' tail bucket: exact where `1 - sum(top-K)` cancels to nothing in float32."""
    from trl_sgcd.credit.scoring.divergence import _teacher_support, topk_tail_logprob

    logits = torch.full((3, 50), -30.0)
    logits[:, :4] = torch.tensor([8.0, 7.0, 6.0, 5.0])  # the top 4 hold all but ~1e-15 of the mass
    observed = torch.tensor([0, 10, 49])  # in the top K, outside it, outside it
    support = _teacher_support(logits, observed, top_k=4)
    exact = logits.double().log_softmax(-1)[:, 4:].logsumexp(-1)  # mass outside the top 4, float64
    torch.testing.assert_close(topk_tail_logprob(support).double(), exact, atol=1e-4, rtol=1e-5)
    assert (1.0 - support.log_q[:, :-1].exp().sum(-1)).abs().max() < 1e-6  # what 1 - sum would have had to resolve
