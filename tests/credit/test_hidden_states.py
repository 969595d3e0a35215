"""Shared-prefix scoring (`trl_sgcd.credit.scoring.hidden_states`) equals one plain forward per row, on the tiny random Llama."""

import pytest
import torch

from tests.credit.test_scorer import TEMPERATURE, _args, _pad_left, _pad_right, _reorder_atol
from trl_sgcd.credit.scoring.hidden_states import completion_hidden, shared_prefix_length
from trl_sgcd.credit.scoring.model_access import backbone_of
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer

FIELDS = ("divergence", "teacher_entropy", "student_logprobs", "teacher_logprobs", "teacher_topk_logprobs")


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with torch.no_grad():  # sharper distributions, as in test_scorer: larger divergences to compare
        model.model.norm.weight.mul_(40.0)
    return model.eval()


def group_batch(*, system_len=12, user_lens=(4, 7), group=3, reference_lens=(5, 3), completion_lens=None, seed=0):
    """TRL layout for `len(user_lens)` groups of `group` rollouts: one system prefix, one user turn and one reference
    per group (the teacher prompt is the student prompt plus the group's reference), a completion per rollout."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(10, 2000, (n,), generator=g).tolist()  # noqa: E731
    system = rand(system_len)
    users, refs = [rand(n) for n in user_lens], [rand(n) for n in reference_lens]
    rows = len(user_lens) * group
    prompts = [system + users[i // group] for i in range(rows)]
    teachers = [system + users[i // group] + refs[i // group] for i in range(rows)]
    completion_lens = completion_lens or [3 + (5 * i) % 7 for i in range(rows)]
    p_ids, p_mask = _pad_left(prompts, 2)
    t_ids, t_mask = _pad_left(teachers, 2)
    c_ids, c_mask = _pad_right([rand(n) for n in completion_lens], 2)
    return {
        "student_input_ids": torch.cat([p_ids, c_ids], 1),
        "student_attention_mask": torch.cat([p_mask, c_mask], 1),
        "teacher_input_ids": torch.cat([t_ids, c_ids], 1),
        "teacher_attention_mask": torch.cat([t_mask, c_mask], 1),
        "completion_ids": c_ids,
        "completion_mask": c_mask,
    }


def _encoded_tokens(model, fn):
    """Run `fn`, return its result and the number of input positions the backbone encoded."""
    seen = []
    hook = backbone_of(model).register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    try:
        return fn(), sum(seen)
    finally:
        hook.remove()


@pytest.mark.parametrize(
    "layout",
    [
        dict(),  # two groups, common system prefix, each group's prompt shared by its rows
        dict(user_lens=(6,), group=5, reference_lens=(4,)),  # one group: the whole prompt is shared
        dict(
            system_len=0, user_lens=(4, 7, 2, 5, 6), group=1, reference_lens=(5, 3, 2, 1, 4)
        ),  # nothing shared: one plain forward
    ],
)
@pytest.mark.parametrize("batch_size", [None, 4])
def test_shared_prefix_scores_equal_unshared(model, layout, batch_size):
    batch = group_batch(**layout)
    settings = dict(top_k=4, temperature=TEMPERATURE, chunk_size=5, batch_size=batch_size)
    plain, plain_tokens = _encoded_tokens(
        model, lambda: DenseDivergenceScorer(**settings).score(model, *_args(batch), return_teacher_topk=True)
    )
    shared, shared_tokens = _encoded_tokens(
        model,
        lambda: DenseDivergenceScorer(**settings, share_prefix=True).score(
            model, *_args(batch), return_teacher_topk=True
        ),
    )
    atol = _reorder_atol(model, batch)
    assert atol < 1e-4 and plain.divergence.max() > 0.1  # not vacuous: divergences far above the tolerance
    for field in FIELDS:
        torch.testing.assert_close(getattr(shared, field), getattr(plain, field), atol=atol, rtol=0)
    assert torch.equal(shared.teacher_topk_ids, plain.teacher_topk_ids)
    if layout.get("system_len", 12):
        assert shared_tokens < 0.8 * plain_tokens and shared.num_forwards > plain.num_forwards  # a prefill per context
    else:
        assert shared_tokens == plain_tokens and shared.num_forwards == plain.num_forwards


def test_hidden_states_equal_a_plain_forward(model):
    batch = group_batch(user_lens=(5, 5), reference_lens=(1, 1))  # equal lengths: no padding at all
    mask = batch["completion_mask"].bool()
    backbone = backbone_of(model)
    with torch.no_grad():
        plain, n_plain = completion_hidden(backbone, batch["student_input_ids"], batch["student_attention_mask"], mask)
        shared, n_shared = completion_hidden(
            backbone, batch["student_input_ids"], batch["student_attention_mask"], mask, share_prefix=True
        )
    assert (n_plain, n_shared) == (1, 2) and shared.shape == plain.shape == (int(mask.sum()), model.config.hidden_size)
    torch.testing.assert_close(shared, plain, atol=1e-4 * plain.abs().max().item(), rtol=0)


def test_shared_prefix_length():
    ids = torch.tensor([[0, 5, 6, 7, 8], [5, 6, 7, 9, 9], [0, 0, 5, 6, 4]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert shared_prefix_length(ids, mask) == 2  # [5, 6]; capped at the shortest prompt (3) minus one
    assert shared_prefix_length(ids[:2], mask[:2]) == 3  # [5, 6, 7]
    assert shared_prefix_length(ids[:1], mask[:1]) == 0  # one row: nothing to share
    assert shared_prefix_length(torch.tensor([[5, 6, 7], [4, 6, 7]]), torch.ones(2, 3, dtype=torch.long)) == 0
    right_padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert shared_prefix_length(torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]]), right_padded) == 0  # not TRL's layout
