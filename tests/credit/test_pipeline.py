"""The credit pipeline on tensors with the tiny model, without a Trainer: what each mode hands TRL, and SDPO's loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.trainer_utils import tiny_args
from trl_sgcd.credit.pipeline import CreditPipeline
from trl_sgcd.credit.scoring.distill_losses import generalized_jsd, sdpo_distillation_loss
from trl_sgcd.credit.types import CreditReference, scored_rows
from trl_sgcd.credit.weighting.weights import loss_mask

ADVANTAGES = torch.tensor([1.0, -1.0, 0.5, -0.5])
REFERENCE = "Call lookup with the task's key first, then report the value it returns. Avoid alpha."


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path)


def _render(tokenizer):
    def render(prompts):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    return render


def _pad(rows, value, side):
    width = max(len(r) for r in rows)
    ids = [[value] * (width - len(r)) + r if side == "left" else r + [value] * (width - len(r)) for r in rows]
    mask = [
        [0] * (width - len(r)) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * (width - len(r))
        for r in rows
    ]
    return torch.tensor(ids), torch.tensor(mask)


def _batch(tokenizer):
    """4 rows: prompts rendered by the chat template, completions right-padded, a tool observation in row 0."""
    prompts = [[{"role": "user", "content": f"Find the record for key {k} and report its value."}] for k in "abab"]
    prompt_ids, prompt_mask = _pad(_render(tokenizer)(prompts), tokenizer.pad_token_id, "left")
    texts = [
        'I will call lookup for alpha now and then answer the question with care. {"value": 5} The value is 5.',
        "The value is probably seven, I did not check anything at all before answering.",
        "Let me look it up first: lookup(beta). It returned 4, so the answer is four.",
        "No idea.",
    ]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    completion_ids, completion_mask = _pad(ids, tokenizer.pad_token_id, "right")
    tool_mask = torch.ones_like(completion_mask)
    tool_mask[0, 16:22] = 0  # a tool observation inside row 0
    refs = [CreditReference(REFERENCE, {}, ["alpha"], "contrast", group_index=i // 2) for i in range(3)] + [None]
    tensors = dict(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        tool_mask=tool_mask,
        advantages=ADVANTAGES.clone(),
    )
    return tensors, prompts, refs


def _credit(tmp_path, model, tokenizer, **overrides):
    args = tiny_args(tmp_path, **overrides)
    pipe = CreditPipeline(args, tokenizer, num_generations=2)
    tensors, prompts, refs = _batch(tokenizer)
    result = pipe.compute_credit(model=model, **tensors, prompts=prompts, references=refs, render=_render(tokenizer))
    return pipe, tensors, result


def test_sgcd_advantages_are_a_times_w_on_eligible_tokens(tmp_path, model, tokenizer):
    pipe, t, result = _credit(tmp_path, model, tokenizer)
    assert result.rows == scored_rows(result.references) == [0, 1, 2]
    w, mask = result.weights, loss_mask(t["completion_mask"], t["tool_mask"]).bool()
    assert torch.equal(result.advantages, ADVANTAGES[:, None] * w)
    assert w.min() >= 1.0 and w.max() <= 2.0 and (w[:3] > 1.0).any()  # credit landed somewhere
    assert torch.all(w[3] == 1.0) and torch.all(w[~mask] == 1.0)  # no teacher, tool observation, padding: W = 1
    assert all(torch.all(w[row][~result.eligible[k]] == 1.0) for k, row in enumerate(result.rows))
    assert result.stats.sums["rows_scored"] == 3 and result.stats.sums["weights_off_loss_mask"] == 0
    assert result.scores.num_forwards >= 2 and result.extra_loss_inputs == {}
    alpha = [i for i, tok in enumerate(t["completion_ids"][0].tolist()) if "alpha" in tokenizer.decode([tok])]
    assert alpha and not result.eligible[0, alpha].any()  # a masked literal's tokens get no credit


def test_modes_hand_trl_what_the_mode_table_says(tmp_path, model, tokenizer):
    _, _, uniform = _credit(tmp_path, model, tokenizer, credit_mode="uniform")
    for k, row in enumerate(uniform.rows):
        values = uniform.weights[row][uniform.eligible[k]]
        assert torch.allclose(values, values[0].expand_as(values)) and values[0] > 1.0  # one weight per rollout
    pipe, t, direct = _credit(tmp_path, model, tokenizer, credit_mode="direct_sd")
    assert torch.all(direct.weights == 1.0) and torch.equal(
        direct.advantages, ADVANTAGES[:, None].expand_as(direct.weights)
    )
    assert direct.extra_loss_inputs["credit_teacher_topk_ids"].shape[-1] == pipe.args.credit_top_k
    assert direct.extra_loss_inputs["credit_sd_mask"][3].sum() == 0
    pipe, t, sdpo = _credit(tmp_path, model, tokenizer, credit_mode="sdpo")
    assert torch.all(sdpo.advantages == 0.0)  # pure SDPO: the reward is replaced
    assert sdpo.extra_loss_inputs["credit_teacher_topk_ids"].shape[-1] == 100
    loss, name, coef = pipe.extra_loss(model, {**t, **sdpo.extra_loss_inputs}, temperature=pipe.args.temperature)
    assert name == "sgcd/sdpo_distillation_loss" and coef == 1.0 and loss.requires_grad and loss > 0
    _, _, sampled = _credit(
        tmp_path, model, tokenizer, credit_mode="sdpo", credit_sdpo_distillation_mode="sampled_token"
    )
    ratio = (sampled.scores.teacher_logprobs - sampled.scores.student_logprobs) * sampled.eligible
    assert torch.allclose(sampled.advantages[sampled.rows], ratio) and sampled.extra_loss_inputs == {}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_generalized_jsd_equals_trls_sdpo_divergence(alpha):
    from trl.experimental.sdpo.loss_utils import compute_divergence

    torch.manual_seed(0)
    log_p, log_q = torch.randn(5, 7).log_softmax(-1), torch.randn(5, 7).log_softmax(-1)
    assert torch.allclose(generalized_jsd(log_p, log_q, alpha), compute_divergence(log_p, log_q, alpha), atol=1e-6)


def test_sdpo_loss_equals_the_naive_full_logit_computation(tmp_path, model, tokenizer):
    pipe, t, sdpo = _credit(tmp_path, model, tokenizer, credit_mode="sdpo", credit_sdpo_top_k=8)
    inputs = sdpo.extra_loss_inputs
    ids, mask = (
        torch.cat([t["prompt_ids"], t["completion_ids"]], 1),
        torch.cat([t["prompt_mask"], t["completion_mask"]], 1),
    )
    kwargs = dict(alpha=0.5, temperature=pipe.args.temperature, chunk_size=3)
    targets = [inputs[k] for k in ("credit_sd_mask", "credit_teacher_topk_ids", "credit_teacher_topk_logprobs")]
    loss = sdpo_distillation_loss(model, ids, mask, *targets, **kwargs)
    T = t["completion_ids"].size(1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -T - 1 : -1] / pipe.args.temperature  # (B, T, V)
    log_p_all = logits.float().log_softmax(-1)
    top, log_q = inputs["credit_teacher_topk_ids"], inputs["credit_teacher_topk_logprobs"]
    log_p = log_p_all.gather(-1, top)
    p_tail = (1 - log_p.exp().sum(-1)).clamp(min=1e-30)
    q_tail = (1 - log_q.exp().sum(-1)).clamp(min=1e-30)
    student = torch.cat([log_p, p_tail.log()[..., None]], -1)
    teacher = torch.cat([log_q, q_tail.log()[..., None]], -1)
    per_token = generalized_jsd(student, teacher, 0.5) * inputs["credit_sd_mask"]  # (B, T)
    naive = (per_token.sum(-1) / inputs["credit_sd_mask"].sum(-1).clamp(min=1)).mean()
    assert torch.allclose(loss, naive, rtol=1e-4, atol=1e-6) and loss > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
