"""`credit_compact_lm_head`: on CPU, TRL's fused LM head scores only labelled positions, with the same results."""

import torch
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from trl_sgcd.lm_head import compact_lm_head


def _loss_and_grads(model, input_ids, labels, compact):
    model.zero_grad()
    with compact_lm_head(compact):
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.entropy.detach(), out.loss.detach(), grads


def test_compact_path_equals_the_full_path_and_skips_unlabelled_positions(tiny_model_path, monkeypatch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    input_ids = torch.randint(0, model.config.vocab_size, (3, 40))
    labels = input_ids.clone()
    labels[:, :30] = -100  # a long prompt, a short completion
    labels[2, 35:] = -100  # a padded row
    rows_seen = []
    original = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        rows_seen.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    full = _loss_and_grads(model, input_ids, labels, compact=False)
    compact = _loss_and_grads(model, input_ids, labels, compact=True)
    assert rows_seen == [3 * 39, int((labels[:, 1:] != -100).sum())]  # the full path projects every position
    for a, b in zip(full[:3], compact[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert full[3].keys() == compact[3].keys() and full[3]
    for name in full[3]:
        torch.testing.assert_close(full[3][name], compact[3][name], rtol=1e-4, atol=1e-6)


def test_the_context_restores_trl_and_nests(tiny_model_path):
    original = trl_utils._use_triton
    cpu = torch.device("cpu")
    with compact_lm_head():
        assert trl_utils._use_triton(cpu) is True
        with compact_lm_head():  # nested (e.g. a loss inside a scoring call): still on, restored once
            assert trl_utils._use_triton(cpu) is True
        assert trl_utils._use_triton(cpu) is True
    assert trl_utils._use_triton is original and original(cpu) is False
    with compact_lm_head(enabled=False):
        assert trl_utils._use_triton is original


def test_the_trainer_loss_projects_only_completion_positions(tmp_path, tiny_model_path, monkeypatch):
    from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward
    from trl_sgcd import SGCDTrainer

    rows_seen, labelled = [], []
    original = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, weight, bias, labels, *args):
        rows_seen.append(hidden.shape[0])
        return original(hidden, weight, bias, labels, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    trainer = scripted_first_turn(SGCDTrainer)(
        model=tiny_model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(4),
        args=tiny_args(tmp_path, max_completion_length=24),
        environment_factory=ToyLookupEnv,
    )
    compute_loss = trainer._compute_loss

    def recorded(model, inputs):
        labelled.append(int(inputs["completion_mask"].sum()))
        return compute_loss(model, inputs)

    trainer._compute_loss = recorded
    trainer.train()
    # the loss forward(s) projected exactly the completion positions (TRL labels the whole completion, tool results
    # included, and masks them in the loss), not the prompt's
    assert labelled and rows_seen[-len(labelled) :] == labelled
