"""`credit_saliency` / `credit_spans`: the rule's properties, and a token-by-token pure-Python reference."""

import math
import statistics
import time

import pytest
import torch

from trl_sgcd.credit.weighting.saliency import credit_saliency, credit_spans

DEFAULTS = {
    "spike_z": 2.0,
    "saturation_z": 4.0,
    "reset_z": -0.5,
    "entropy_rise": 0.5,
    "max_span": 32,
    "min_divergence": 1e-4,
}


LAX = {"spike_z": 2.0, "saturation_z": 4.0, "reset_z": -0.5}
"""The segmenter's former defaults: spans run on until an entropy rise, an ineligible token or `max_span`. The tests of
each ending rule use them, so that one rule at a time ends a span."""


def _lax_spans(*args, **kwargs):
    return credit_spans(*args, **{**LAX, **kwargs})


def _lax_saliency(*args, **kwargs):
    return credit_saliency(*args, **{**LAX, **kwargs})


def naive_saliency(d, h, eligible, *, spike_z, saturation_z, reset_z, entropy_rise, max_span, min_divergence):
    """The module docstring's rule, written plainly: one row at a time, one token at a time."""
    out = []
    for dr, hr, er in zip(d.tolist(), h.tolist(), eligible.bool().tolist()):
        T = len(dr)
        valid = [e and math.isfinite(x) and math.isfinite(y) for x, y, e in zip(dr, hr, er)]
        values = [x for x, v in zip(dr, valid) if v]
        s = [0.0] * T
        if len(values) < 2:
            out.append(s)
            continue
        med = statistics.median(values)
        dev = [abs(x - med) for x in values]
        scale = max(1.4826 * statistics.median(dev), sum(dev) / len(dev), 1e-8)
        z = [(x - med) / scale if v else None for x, v in zip(dr, valid)]
        spike = [v and z[t] >= spike_z and dr[t] >= min_divergence for t, v in enumerate(valid)]
        t = 0
        while t < T:
            if not spike[t]:
                t += 1
                continue
            t0, peak, end = t, z[t], t + 1
            while (
                end < T
                and end - t0 < max_span
                and valid[end]
                and hr[end] <= hr[t0] + entropy_rise
                and z[end] >= reset_z
            ):
                if spike[end]:
                    peak = max(peak, z[end])
                end += 1
            for u in range(t0, end):
                s[u] = min(max(peak / saturation_z, 0.0), 1.0)
            t = end
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


def _spike_row(T=40, at=10, base=0.1, height=5.0):
    d = torch.full((1, T), base)
    d[0, at] = height
    return d, torch.zeros(1, T), torch.ones(1, T, dtype=torch.bool)


def test_isolated_spike_flat_entropy_gives_one_span_from_the_spike():
    d, h, m = _spike_row()
    s = _lax_saliency(d, h, m, max_span=8)
    assert s.dtype == torch.float32 and s.shape == d.shape
    assert (s[0, :10] == 0).all() and (s[0, 18:] == 0).all()
    assert (s[0, 10:18] == 1.0).all()  # z = 39 >> saturation: s = 1 over a contiguous span of max_span tokens
    assert _lax_spans(d, h, m, max_span=8) == [[(10, 18, 1.0)]]


def test_entropy_rise_ends_the_span():
    d, h, m = _spike_row()
    h[0, 14] = 0.6  # > H_t0 + 0.5
    assert _lax_spans(d, h, m) == [[(10, 14, 1.0)]]
    h[0, 14] = 0.5  # == H_t0 + 0.5: still stable
    assert _lax_spans(d, h, m)[0][0][1] > 14


def test_divergence_reset_ends_the_span():
    d = torch.tensor([[0.1, 0.2] * 10])
    d[0, 6] = 5.0
    d[0, 9] = -5.0  # a divergence far below the median: z < reset_z
    h, m = torch.zeros_like(d), torch.ones_like(d, dtype=torch.bool)
    assert _lax_spans(d, h, m) == [[(6, 9, 1.0)]]


def test_length_cap_and_ineligible_token_end_the_span():
    d, h, m = _spike_row()
    assert _lax_spans(d, h, m, max_span=3) == [[(10, 13, 1.0)]]
    assert _lax_spans(d, h, m, max_span=1) == [[(10, 11, 1.0)]]
    m[0, 12] = False  # e.g. a tool-observation token
    s = _lax_saliency(d, h, m)
    assert _lax_spans(d, h, m) == [[(10, 12, 1.0)]]
    assert s[0, 12] == 0 and (s[0, 13:] == 0).all()


def test_new_spike_continues_the_span_and_raises_its_peak():
    d = torch.full((1, 40), 0.1)
    d[0, 10], d[0, 13] = 0.45, 0.9
    h, m = torch.zeros_like(d), torch.ones_like(d, dtype=torch.bool)
    scale = (0.35 + 0.8) / 40  # MAD = 0, so the scale is the mean absolute deviation from the median 0.1
    spans = _lax_spans(d, h, m, max_span=6, saturation_z=100.0)
    # One span from the first spike; the second spike inside it keeps the start (no restart of the length count)
    # and raises the peak to its own z-score.
    assert len(spans[0]) == 1
    start, end, peak = spans[0][0]
    assert (start, end) == (10, 16)
    assert peak == pytest.approx(0.8 / scale / 100.0)
    s = _lax_saliency(d, h, m, max_span=6, saturation_z=100.0)
    assert torch.allclose(s[0, 10:16], torch.full((6,), peak)) and s[0, 16] == 0


def test_constant_divergence_gives_zero_saliency():
    d = torch.full((3, 50), 0.7)
    s = credit_saliency(d, torch.rand(3, 50), torch.ones(3, 50, dtype=torch.bool))
    assert (s == 0).all()


def test_saliency_zero_off_mask_and_in_unit_interval():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(8, 300, generator=g) ** 4
    h = torch.rand(8, 300, generator=g)
    m = torch.rand(8, 300, generator=g) > 0.3
    s = credit_saliency(d, h, m)
    assert (s >= 0).all() and (s <= 1).all() and (s[~m] == 0).all()
    assert (s > 0).any()


def test_min_divergence_and_small_rows():
    d, h, m = _spike_row(base=0.0, height=5e-5)  # a clear z outlier, but below min_divergence
    assert (credit_saliency(d, h, m) == 0).all()
    assert (credit_saliency(d, h, m, min_divergence=0.0) > 0).any()
    one = torch.zeros(1, 10, dtype=torch.bool)
    one[0, 3] = True
    assert (credit_saliency(torch.rand(1, 10), torch.zeros(1, 10), one) == 0).all()
    assert credit_saliency(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool)).shape == (0, 5)


def test_nan_and_inf_are_never_spikes_nor_propagated():
    d, h, m = _spike_row()
    d[0, 20], d[0, 30] = float("nan"), float("inf")
    s = _lax_saliency(d, h, m, max_span=20)
    assert torch.isfinite(s).all()
    assert s[0, 20] == 0 and s[0, 30] == 0 and s[0, 10] == 1
    assert _lax_spans(d, h, m, max_span=20) == [[(10, 20, 1.0)]]  # a NaN ends the span like an ineligible token
    assert (_lax_saliency(torch.full((2, 9), float("nan")), torch.zeros(2, 9), torch.ones(2, 9)) == 0).all()


def test_defaults_keep_credit_on_the_spike_and_grade_saliency():
    """The defaults (spike_z 3, reset_z 1, saturation_z 8, chosen on the controlled tier): a span ends as soon as the
    divergence is back to the rollout's usual level, so a 3-token decisive plateau gets credit and the flat rest none;
    saliency is graded by the peak z-score up to 8."""
    g = torch.Generator().manual_seed(0)
    d = 0.1 + 0.01 * torch.rand(1, 60, generator=g)
    d[0, 20:23] = torch.tensor([0.9, 1.1, 0.8])  # decisive plateau: z >> 8
    d[0, 40] = 0.1 + 4.0 * (d[0, :20].median() - 0.1).abs().clamp_min(0.0) + 0.02  # a small bump: z ~ 3-8
    h, m = torch.zeros_like(d), torch.ones_like(d, dtype=torch.bool)
    s = credit_saliency(d, h, m)
    assert s[0, 20:23].tolist() == [1.0, 1.0, 1.0] and s[0, 23] == 0 and (s[0, :20] == 0).all()
    assert ((s[0] > 0).sum() <= 4) and (s[0, 41:] == 0).all()  # at most the plateau and the bump: sparse
    lax = _lax_saliency(d, h, m)
    assert (lax[0] > 0).sum() >= 32  # the former defaults: one span of max_span tokens from the plateau on
    z_peak = 5.0  # a spike of z = 5 gets s = 5 / 8, not the former 1
    row = torch.full((1, 41), 0.0)
    row[0, :20], row[0, 20] = 1.0, 1.0 + z_peak  # MAD = 1 (half the tokens at 0, half at 1): scale 1.4826
    s = credit_saliency(row, torch.zeros_like(row), torch.ones_like(row, dtype=torch.bool))
    assert s.max().item() == pytest.approx(min((z_peak + 0.0) / 1.4826 / 8.0, 1.0), rel=1e-5)


def test_no_gradient_even_when_inputs_require_grad():
    d = (torch.rand(2, 30) ** 3).requires_grad_()
    h = torch.rand(2, 30).requires_grad_()
    s = credit_saliency(d * 2, h, torch.ones(2, 30))
    assert not s.requires_grad and s.grad_fn is None


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="teacher_entropy"):
        credit_saliency(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="eligible_mask"):
        credit_saliency(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="max_span"):
        credit_saliency(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), max_span=0)


def _random_case(seed, B=6, T=400):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(B, T, generator=g) ** 6 * 3  # heavy tail: many spikes and spans
    h = (torch.randn(B, T, generator=g) * 0.3).cumsum(-1) * 0.2 + 1.0  # slowly varying entropy with rises
    m = torch.rand(B, T, generator=g) > 0.1
    m[0] = False
    m[1, 1:] = False  # a row with one eligible token
    d[2, 50:60] = float("nan")
    h[3, 100:105] = float("inf")
    return d, h, m


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "params",
    [
        DEFAULTS,
        dict(DEFAULTS, max_span=5, entropy_rise=0.1),
        dict(DEFAULTS, spike_z=1.0, reset_z=0.0, saturation_z=2.0, max_span=64),
        dict(DEFAULTS, spike_z=3.0, reset_z=-3.0, entropy_rise=2.0, max_span=1000),
    ],
)
def test_matches_naive_reference(seed, params):
    d, h, m = _random_case(seed)
    s = credit_saliency(d, h, m, **params)
    ref = naive_saliency(d, h, m, **params)
    assert (ref > 0).any()
    torch.testing.assert_close(s.double(), ref, atol=1e-6, rtol=0)
    painted = torch.zeros_like(s)
    for row, spans in enumerate(credit_spans(d, h, m, **params)):
        for start, end, peak in spans:
            assert (painted[row, start:end] == 0).all()  # disjoint
            painted[row, start:end] = peak
    torch.testing.assert_close(painted, s)


def test_large_batch_is_fast():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(64, 16384, generator=g) ** 4
    h = torch.rand(64, 16384, generator=g)
    m = torch.rand(64, 16384, generator=g) > 0.1
    credit_saliency(d, h, m)  # warm-up
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        credit_saliency(d, h, m)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, f"credit_saliency took {best:.2f} s for B=64, T=16384"
