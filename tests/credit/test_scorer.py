"""`DenseDivergenceScorer` on the tiny random Llama: chunking, naive full-logit reference, PEFT, modes, forwards."""

import types

import pytest
import torch
import torch.nn.functional as F

from tests.credit.test_divergence import naive_topk_divergence
from trl_sgcd.credit.distill_losses import teacher_matching_loss
from trl_sgcd.credit.scorer import DenseDivergenceScorer, DenseScores

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with torch.no_grad():  # sharpen the random model's near-uniform next-token distributions: larger divergences
        model.model.norm.weight.mul_(40.0)
    return model.eval()


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
    from trl_sgcd.credit import divergence

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


# ------------------------------------------------------------------------------------------- teacher_matching_loss
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


# ------------------------------------------------------------------------------------------------ ZeRO-3, 2 processes
ZERO3_WORKER = """
import datetime, sys
import torch, torch.distributed as dist
from accelerate import Accelerator, InitProcessGroupKwargs
from transformers import AutoModelForCausalLM
sys.path.insert(0, sys.argv[1])
from tests.credit.test_scorer import _args, make_batch
from trl_sgcd.credit.distill_losses import teacher_matching_loss
from trl_sgcd.credit.scorer import DenseDivergenceScorer

def load():  # before the Accelerator exists, so that nothing is partitioned at load time
    model = AutoModelForCausalLM.from_pretrained(sys.argv[2])
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)
    return model

reference, model = load().eval(), load()
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=60))])
acc.state.deepspeed_plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=1, train_batch_size=2)
engine, optimizer = acc.prepare(model, optimizer)
rank = dist.get_rank()
assert hasattr(engine.module.lm_head.weight, "ds_id") and engine.module.lm_head.weight.numel() == 0
rows = 3 if rank == 0 else 1  # unequal work: rank 1 must pad with dummy forwards
batch = {k: v[:rows] for k, v in make_batch(seed=3).items()}
scorer = DenseDivergenceScorer(top_k=6, chunk_size=4, batch_size=1)
n = torch.tensor([scorer.num_batches(rows)])
dist.all_reduce(n, op=dist.ReduceOp.MAX)
engine.train()
out = scorer.score(engine, *_args(batch), min_batches=int(n), return_teacher_topk=True)
ref = scorer.score(reference, *_args(batch), return_teacher_topk=True)
assert out.num_forwards == 6 and engine.training
for f in ("divergence", "teacher_entropy", "student_logprobs", "teacher_logprobs", "teacher_topk_logprobs"):
    torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=1e-5, rtol=1e-4)
assert torch.equal(out.teacher_topk_ids, ref.teacher_topk_ids)
mask = batch["completion_mask"] if rank == 0 else torch.zeros_like(batch["completion_mask"])
for step in range(2):  # a broken partitioned head would fail the second backward
    loss = teacher_matching_loss(engine, batch["student_input_ids"], batch["student_attention_mask"], mask,
                                 out.teacher_topk_ids, out.teacher_topk_logprobs, temperature=1.0, chunk_size=3)
    if step == 0:
        expected = teacher_matching_loss(reference, batch["student_input_ids"], batch["student_attention_mask"],
                                         mask, out.teacher_topk_ids, out.teacher_topk_logprobs, temperature=1.0,
                                         chunk_size=3)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
    engine.backward(loss)
    engine.step()
moved = scorer.score(engine, *_args(batch), min_batches=int(n))
assert not torch.allclose(moved.divergence, out.divergence)  # the steps trained the model
print("ZERO3-OK", rank, flush=True)
"""

ZERO3_ACCELERATE_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config: {zero_stage: 3, offload_optimizer_device: none, offload_param_device: none, zero3_init_flag: false}
mixed_precision: 'no'
num_machines: 1
num_processes: 2
use_cpu: false
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_zero3_two_ranks_unequal_rows(tmp_path, tiny_model_path):
    """ZeRO-3 on 2 CPU ranks: same forwards on both, scores equal to an unpartitioned model, the loss backpropagates."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from trl_sgcd.import_utils import is_deepspeed_available

    if not (is_deepspeed_available() and shutil.which("g++") and shutil.which("ninja")):
        pytest.skip("needs deepspeed, g++ and ninja")
    (tmp_path / "worker.py").write_text(ZERO3_WORKER)
    (tmp_path / "zero3.yaml").write_text(ZERO3_ACCELERATE_CONFIG)
    root = str(Path(__file__).resolve().parents[2])
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(tmp_path / "zero3.yaml"),
        "--main_process_port",
        "0",
        str(tmp_path / "worker.py"),
        root,
        tiny_model_path,
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks (a hang is a failure)
        log, _ = proc.communicate()
    assert proc.returncode == 0 and log.count("ZERO3-OK") == 2, log[-4000:]
