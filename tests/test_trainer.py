"""SGCDTrainer end to end on the tiny model: parity with GRPO, token exactness, every credit mode, edge cases.

Trained trainers are shared through the module-scoped fixture `trained` (`tests/trainer_runs.py`): one training run
per configuration. Dynamic sampling: `test_trainer_sampling.py`; LoRA, empty completions, bf16: `test_trainer_variants.py`.
"""

import logging
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from tests.trainer_runs import _record, _tool_trainer
from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward
from trl_sgcd import SGCDConfig, SGCDTrainer


def _length_reward(completions, **kwargs):
    return [float(len(str(c)) % 7) / 7.0 for c in completions]


def _plain_dataset():
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(4)])


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo"])
def test_off_mode_is_grpo_bit_for_bit(tmp_path, tiny_model_path, loss_type):
    common = dict(
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        max_steps=1,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=7,
        loss_type=loss_type,
        beta=0.0,
    )
    results = []
    for trainer_cls, config_cls, extra in [
        (GRPOTrainer, GRPOConfig, {}),
        (SGCDTrainer, SGCDConfig, {"credit_mode": "off", "credit_compact_lm_head": False}),
    ]:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        trainer = trainer_cls(
            model=model,
            reward_funcs=_length_reward,
            train_dataset=_plain_dataset(),
            args=config_cls(output_dir=str(tmp_path / trainer_cls.__name__), **common, **extra),
        )
        out = trainer.train()
        results.append((out.training_loss, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}))
    (loss_a, params_a), (loss_b, params_b) = results
    assert loss_a == loss_b
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name


def test_teacher_inputs_are_spliced_token_exact(trained):
    run = trained("sgcd", credit_reference_max_tokens=8)
    trainer, score, apply = run.trainer, run.score, run.apply
    assert score.calls, "the dense scorer never ran"
    (_, s_ids, s_mask, t_ids, t_mask, c_ids, c_mask), _, _ = score.calls[0]
    T = c_ids.size(1)
    assert torch.equal(s_ids[:, -T:], c_ids) and torch.equal(t_ids[:, -T:], c_ids)
    assert torch.equal(t_mask[:, -T:], c_mask)
    # Multi-turn: the scored completions contain tool observations (tool_mask zeros) and they were kept as is.
    output = apply.calls[0][2]
    assert (output["tool_mask"] == 0).any()
    tok = trainer.processing_class
    for row in range(s_ids.size(0)):
        student_prompt = tok.decode(s_ids[row, :-T][s_mask[row, :-T].bool()])
        teacher_prompt = tok.decode(t_ids[row, :-T][t_mask[row, :-T].bool()])
        assert "credit_reference" in teacher_prompt and "credit_reference" not in student_prompt
        # The task prompt is never truncated: every line of the student's prompt is in the teacher's.
        user_task = student_prompt.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
        assert user_task in teacher_prompt
        body = teacher_prompt.split("<credit_reference>")[1].split("</credit_reference>")[0]
        assert len(tok(body, add_special_tokens=False)["input_ids"]) <= 8 + 40  # capped reference + fixed header
    assert run.changed()
    # The tool-use audit is logged (every mode does it; `off` runs the same hook): half the rows called the tool
    # (scripted) and exactly those succeeded, so no success is tool-free and each used one tool.
    logged = trainer.state.log_history[0]
    assert logged["sgcd/audit/success_rate"] == 0.5
    assert logged["sgcd/audit/zero_tool_success_share"] == 0.0
    assert logged["sgcd/audit/tools_per_success"] == 1.0
    # The subclass relies on these keys of GRPOTrainer's output (pinned TRL range).
    assert {
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "advantages",
        "num_items_in_batch",
        "tool_mask",
    } <= set(output)


def _row_key(inputs, i):
    return (tuple(inputs["prompt_ids"][i].tolist()), tuple(inputs["completion_ids"][i].tolist()))


def test_the_loss_receives_grpo_advantages_times_the_credit_weights(trained):
    """What `_compute_loss` gets (after TRL's shuffle and split) is A * W for every row, A being GRPO's own
    advantage and W the weights of `trainer.last_credit`; some rows do get W > 1."""
    run = trained("sgcd", credit_reference_max_tokens=8)
    (grpo,) = run.rounds  # GRPO's output before credit: A is one scalar per row
    last = run.trainer.last_credit
    assert grpo["advantages"].dim() == 1 and last.rows and (last.weights[last.rows] > 1.0).any()
    expected = {_row_key(grpo, i): grpo["advantages"][i] * last.weights[i] for i in range(len(grpo["advantages"]))}
    seen = 0
    for (_, inputs), _, _ in run.loss.calls:
        for i in range(inputs["advantages"].size(0)):
            assert torch.equal(inputs["advantages"][i], expected[_row_key(inputs, i)])
            seen += 1
    assert seen == grpo["advantages"].numel()  # every row reached the loss (identical rows share one key)


@pytest.mark.parametrize("mode", ["sgcd", "no_reference", "uniform", "direct_sd", "sdpo"])
def test_every_credit_mode_trains(trained, mode):
    run = trained(mode, credit_mode=mode) if mode != "sgcd" else trained("sgcd", credit_reference_max_tokens=8)
    trainer = run.trainer
    stats = trainer.last_credit.stats
    assert stats.sums["rows_scored"] > 0 and stats.sums["scored_tokens"] > 0
    assert trainer.last_credit.rows and trainer.last_credit.advantages.dim() == 2
    if trainer.credit_mode.weights_carry_credit:
        assert stats.sums["credit_tokens"] > 0
        w = trainer.last_credit.weights
        assert w.min() >= 1.0 and w.max() <= trainer.args.credit_cap
    if trainer.credit_mode.uses_reference_builder:
        assert run.build.calls
    else:
        assert not run.build.calls, "sibling-context modes must not call the reference backend"
    assert run.changed()
    logged = trainer.state.log_history[0]
    assert "sgcd/mixed_group_fraction" in logged and logged["sgcd/mixed_group_fraction"] > 0


@pytest.mark.parametrize("mode", ["direct_sd", "sdpo"])
def test_the_extra_loss_reaches_the_loss(trained, mode):
    """The auxiliary loss is in what `_compute_loss` returns: the loss moves by coef * aux when the coefficient does."""
    run = trained(mode, credit_mode=mode)
    trainer = run.trainer
    (model, inputs), _, _ = run.loss.calls[0]
    name = "sgcd/direct_sd_loss" if mode == "direct_sd" else "sgcd/sdpo_distillation_loss"
    assert trainer.state.log_history[0][name] > 0
    field = "credit_direct_sd_coef" if mode == "direct_sd" else "credit_sdpo_distillation_weight"
    coef = getattr(trainer.args, field)
    with torch.no_grad():
        with_aux = trainer._compute_loss.fn(model, inputs)
        setattr(trainer.args, field, 0.0)
        try:
            without = trainer._compute_loss.fn(model, inputs)
        finally:
            setattr(trainer.args, field, coef)
        aux, _, _ = trainer.credit_pipeline.extra_loss(model, inputs, temperature=trainer.temperature)
    assert aux > 0
    assert torch.allclose(with_aux - without, coef * aux / trainer.current_gradient_accumulation_steps, rtol=1e-4)


def _weights_one_where_no_credit(output, trainer):
    adv = output["advantages"]
    w = trainer.last_credit.weights
    assert torch.all(w == 1.0)
    assert torch.isfinite(adv).all()


def test_batch_with_mixed_and_non_mixed_groups(tmp_path, tiny_model_path):
    # Only row 0 calls the tool: group 0 is mixed, group 1 is all-failure (no teacher, W = 1 there).
    trainer_cls = scripted_first_turn(SGCDTrainer, script=lambda i, rank: i == 0)
    trainer = trainer_cls(
        model=tiny_model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(4),
        args=tiny_args(tmp_path),
        environment_factory=ToyLookupEnv,
    )
    score, apply, build = _record(trainer)
    trainer.train()
    w = trainer.last_credit.weights
    assert trainer.last_credit.stats.sums["rows_scored"] == 4
    assert torch.all(w[4:] == 1.0) and w[:4].max() > 1.0
    assert [g.group_index for g in build.calls[0][0][0]] == [0]


@pytest.mark.parametrize("case", ["not_mixed", "nan_rewards", "truncated"])
def test_batches_without_credit_train_with_unit_weights(tmp_path, tiny_model_path, case, caplog):
    overrides = {}
    script = lambda i, rank: False  # noqa: E731
    reward = toy_reward
    if case == "not_mixed":  # group 0: every sibling succeeds; group 1: every sibling fails
        script = lambda i, rank: i < 4  # noqa: E731
    if case == "nan_rewards":

        def reward(completions, environments=None, **kwargs):
            return [None] * len(completions)

        reward.__name__ = "none_reward"
    if case == "truncated":
        overrides = {"max_completion_length": 3, "mask_truncated_completions": True}
    trainer_cls = scripted_first_turn(SGCDTrainer, script=script)
    trainer = trainer_cls(
        model=tiny_model_path,
        reward_funcs=reward,
        train_dataset=toy_dataset(4),
        args=tiny_args(tmp_path, **overrides),
        environment_factory=ToyLookupEnv,
    )
    score, apply, build = _record(trainer)
    with caplog.at_level(logging.WARNING, logger="trl_sgcd"):
        out = trainer.train()
    assert math.isfinite(out.training_loss)
    _weights_one_where_no_credit(apply.calls[0][2], trainer)
    assert not score.calls or trainer.last_credit.stats.sums["rows_scored"] == 0
    if case == "not_mixed":  # SGCD had nothing to do, and exactly one line says why
        lines = [r.getMessage() for r in caplog.records if "SGCD step" in r.getMessage()]
        assert lines == [
            "SGCD step 1: no mixed group this step (every group all-success or all-failure): SGCD changed nothing."
        ]


def test_refuses_what_it_cannot_do(tmp_path, tiny_model_path):
    with pytest.raises(TypeError, match="SGCDConfig"):
        SGCDTrainer(
            model=tiny_model_path,
            reward_funcs=toy_reward,
            train_dataset=toy_dataset(2),
            args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False),
        )
    with pytest.raises(ValueError, match="vespo"):
        SGCDTrainer(
            model=tiny_model_path,
            reward_funcs=toy_reward,
            train_dataset=toy_dataset(2),
            args=tiny_args(tmp_path, loss_type="vespo"),
            environment_factory=ToyLookupEnv,
        )


def test_model_card_and_tags(tmp_path, tiny_model_path):
    trainer = _tool_trainer(tmp_path, tiny_model_path, credit_mode="off")
    assert "sgcd" in trainer._tag_names and trainer._paper["id"] == "2606.12634"
    trainer.create_model_card(model_name="tiny-sgcd")
    card = (tmp_path / "README.md").read_text()
    assert "SGCD" in card and "2606.12634" in card and "sgcd" in card
