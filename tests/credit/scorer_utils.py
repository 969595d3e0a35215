"""Batches and naive references shared by the `DenseDivergenceScorer` tests (and by test_hidden / test_proposition).

`make_batch` builds TRL's layout (left-padded prompts, right-padded completions); `naive_scores` computes the same
scores from the model's full (B, L, V) logits, position by position.
"""

import torch

from tests.credit.test_divergence import naive_topk_divergence

TEMPERATURE = 0.7


def _pad_left(rows, pad):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    return ids, (torch.arange(width) >= torch.tensor([width - len(r) for r in rows])[:, None]).long()


def _pad_right(rows, pad):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    return ids, (torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]).long()


def make_batch(pad=2, seed=0, prompt_lens=(5, 9, 3), completion_lens=(7, 4, 6), reference_len=6, same=False):
    """TRL layout: left-padded prompts + right-padded completions; the teacher prompt carries an extra reference."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(10, 2000, (n,), generator=g).tolist()  # noqa: E731
    prompts = [rand(n) for n in prompt_lens]
    teacher_prompts = prompts if same else [rand(reference_len + i) + p for i, p in enumerate(prompts)]
    p_ids, p_mask = _pad_left(prompts, pad)
    t_ids, t_mask = _pad_left(teacher_prompts, pad)
    c_ids, c_mask = _pad_right([rand(n) for n in completion_lens], pad)
    return {
        "student_input_ids": torch.cat([p_ids, c_ids], 1),
        "student_attention_mask": torch.cat([p_mask, c_mask], 1),
        "teacher_input_ids": torch.cat([t_ids, c_ids], 1),
        "teacher_attention_mask": torch.cat([t_mask, c_mask], 1),
        "completion_ids": c_ids,
        "completion_mask": c_mask,
    }


def _args(batch):
    return [
        batch[k]
        for k in (
            "student_input_ids",
            "student_attention_mask",
            "teacher_input_ids",
            "teacher_attention_mask",
            "completion_ids",
            "completion_mask",
        )
    ]


def naive_scores(model, batch, *, top_k, divergence="reverse_kl", temperature=TEMPERATURE):
    """Full (B, L, V) logits from the model's own forward, then the naive divergence position by position."""
    T = batch["completion_ids"].size(1)
    with torch.no_grad():
        s = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
        t = model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
    s = s[:, s.size(1) - T - 1 : -1] / temperature  # (B, T, V): logit at L-T-1+j predicts completion token j
    t = t[:, t.size(1) - T - 1 : -1] / temperature
    mask = batch["completion_mask"].bool()
    obs = batch["completion_ids"][mask]
    div, ent = naive_topk_divergence(s[mask], t[mask], obs, top_k=top_k, divergence=divergence)
    out = {name: torch.zeros(mask.shape) for name in ("divergence", "teacher_entropy", "student_lp", "teacher_lp")}
    out["divergence"][mask], out["teacher_entropy"][mask] = div.float(), ent.float()
    out["student_lp"][mask] = torch.log_softmax(s[mask], -1).gather(-1, obs[:, None]).squeeze(-1)
    out["teacher_lp"][mask] = torch.log_softmax(t[mask], -1).gather(-1, obs[:, None]).squeeze(-1)
    return out


def _assert_scores_close(scores, ref):
    torch.testing.assert_close(scores.divergence, ref["divergence"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(scores.teacher_entropy, ref["teacher_entropy"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(scores.student_logprobs, ref["student_lp"], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(scores.teacher_logprobs, ref["teacher_lp"], atol=2e-5, rtol=1e-5)


def _reorder_atol(model, batch):
    """Absolute tolerance for the same float32 scores computed with other chunk sizes or rows per forward.

    The chunk size and the rows per forward change the shapes of the LM-head and backbone matmuls, so BLAS sums over
    the hidden dimension in another order (a 1-row chunk is a GEMV, a 7-row chunk a GEMM): each logit moves by a few
    float32 ulps of the largest logit |z|max (measured: up to 3 eps |z|max, 2.7e-5 with |z|max ~ 75 here). Every
    output is a log-softmax or a p-weighted sum of log-ratios, so it carries that ABSOLUTE error whatever its own
    size: a fixed 1e-6 is below one ulp of a log-probability of -40. Tolerance: 8 eps |z|max.
    """
    with torch.no_grad():
        logits = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
    return 8 * torch.finfo(torch.float32).eps * (logits.abs().max().item() / TEMPERATURE)
