"""SGCDTrainer end to end on the tiny model: parity with GRPO, token exactness, every credit mode, edge cases.

Trained trainers are shared through module-scoped fixtures (`_run`): one training run per configuration.
"""

import math
from contextlib import contextmanager

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

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


class _Recorder:
    """Wraps a bound method, keeps its arguments and result; the real method runs."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        result = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, result))
        return result


def _tool_trainer(tmp_path, model_path, script=None, **overrides):
    trainer_cls = (
        scripted_first_turn(SGCDTrainer) if script is None else scripted_first_turn(SGCDTrainer, script=script)
    )
    return trainer_cls(
        model=model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(4),
        args=tiny_args(tmp_path, **overrides),
        environment_factory=ToyLookupEnv,
    )


def _record(trainer):
    score = _Recorder(trainer.credit_scorer.score)
    trainer.credit_scorer.score = score
    apply = _Recorder(trainer._apply_credit)
    trainer._apply_credit = apply
    build = _Recorder(trainer.reference_builder.build)
    trainer.reference_builder.build = build
    return score, apply, build


@contextmanager
def _grpo_rounds(calls: list):
    """Record every `GRPOTrainer._generate_and_score_completions` call: its prompts and its output (before credit)."""
    original = GRPOTrainer._generate_and_score_completions

    def recorded(self, inputs):
        output = original(self, inputs)
        calls.append(
            {
                "prompts": [x["prompt"] for x in inputs],
                **{k: v.clone() for k, v in output.items() if torch.is_tensor(v)},
            }
        )
        return output

    GRPOTrainer._generate_and_score_completions = recorded
    try:
        yield
    finally:
        GRPOTrainer._generate_and_score_completions = original


class _Run:
    """A trained trainer and what it saw: scorer / credit / builder calls, GRPO's rounds, the loss inputs."""

    def __init__(self, tmp_path, model_path, script=None, **overrides):
        self.trainer = _tool_trainer(tmp_path, model_path, script, **overrides)
        self.score, self.apply, self.build = _record(self.trainer)
        self.loss = _Recorder(self.trainer._compute_loss)
        self.trainer._compute_loss = self.loss
        self.params_before = {k: v.detach().clone() for k, v in self.trainer.model.named_parameters()}
        self.rounds, self.final = [], []
        generate = self.trainer._generate_and_score_completions

        def final(inputs):
            output = generate(inputs)
            self.final.append({k: v.clone() for k, v in output.items() if torch.is_tensor(v)})
            return output

        self.trainer._generate_and_score_completions = final
        with _grpo_rounds(self.rounds):
            self.out = self.trainer.train()

    def changed(self) -> bool:
        return any(not torch.equal(p, self.params_before[k]) for k, p in self.trainer.model.named_parameters())


_RUNS: dict = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_path):
    """`trained(name, **config)`: one training run per name for the whole module."""

    def get(name, script=None, **overrides):
        if name not in _RUNS:
            _RUNS[name] = _Run(tmp_path_factory.mktemp(name), tiny_model_path, script, **overrides)
        return _RUNS[name]

    yield get
    _RUNS.clear()


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
def test_batches_without_credit_train_with_unit_weights(tmp_path, tiny_model_path, case):
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
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    _weights_one_where_no_credit(apply.calls[0][2], trainer)
    assert not score.calls or trainer.last_credit.stats.sums["rows_scored"] == 0


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


def _alternating(i, rank, rnd):
    """Round 0: nobody calls the tool (no mixed group); round 1: every other row does (all groups mixed)."""
    return rnd % 2 == 1 and i % 2 == 0


_DYNAMIC = dict(script=_alternating, credit_dynamic_sampling=True, credit_max_resample_rounds=2)


def test_dynamic_sampling_fills_the_batch_with_mixed_groups(trained):
    run = trained("dynamic_sgcd", **_DYNAMIC)
    assert math.isfinite(run.out.training_loss)
    logged = run.trainer.state.log_history[0]
    assert logged["sgcd/resample/rounds"] == 1.0 and logged["sgcd/resample/mixed_fraction"] == 1.0
    assert logged["sgcd/resample/non_mixed_filled"] == 0.0 and logged["sgcd/resample/generated_groups"] == 4.0
    assert logged["sgcd/mixed_group_fraction"] == 1.0
    output = run.apply.calls[0][2]
    assert output["completion_ids"].size(0) == run.trainer.args.per_device_train_batch_size  # batch size unchanged
    kept, width = run.rounds[1], run.rounds[1]["completion_ids"].size(1)  # the mixed round was kept (re-padded)
    assert torch.equal(output["completion_ids"][:, :width], kept["completion_ids"])
    assert not output["completion_mask"][:, width:].any()
    assert run.trainer.last_credit.stats.sums["credit_tokens"] > 0


def test_grpo_and_sgcd_draw_the_same_batches_and_keep_the_same_groups(trained):
    """Dynamic sampling does not depend on the credit mode: with the same seed, `off` (GRPO) generates the same
    rounds and trains on the same groups as `sgcd` (DAPO-style GRPO is the matched control)."""
    sgcd, off = trained("dynamic_sgcd", **_DYNAMIC), trained("dynamic_off", credit_mode="off", **_DYNAMIC)
    assert len(off.rounds) == len(sgcd.rounds) == 2
    for a, b in zip(off.rounds, sgcd.rounds):
        assert a["prompts"] == b["prompts"]
        assert torch.equal(a["completion_ids"], b["completion_ids"]) and torch.equal(a["advantages"], b["advantages"])
    (kept_off,), (kept_sgcd,) = off.final, sgcd.final
    assert torch.equal(kept_off["completion_ids"], kept_sgcd["completion_ids"])
    assert torch.equal(kept_off["prompt_ids"], kept_sgcd["prompt_ids"])
    assert kept_off["advantages"].dim() == 1 and kept_sgcd["advantages"].dim() == 2  # only the credit differs
    resample = [k for k in sgcd.trainer.state.log_history[0] if k.startswith("sgcd/resample/")]
    assert resample and all(
        off.trainer.state.log_history[0][k] == sgcd.trainer.state.log_history[0][k] for k in resample
    )


def test_lora_adapter_is_the_teacher(tmp_path, tiny_model_path):
    from peft import LoraConfig

    trainer_cls = scripted_first_turn(SGCDTrainer)
    trainer = trainer_cls(
        model=tiny_model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(4),
        args=tiny_args(tmp_path, learning_rate=5e-2),
        environment_factory=ToyLookupEnv,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    lora = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_" in k}
    assert lora
    trainer.train()
    assert trainer.last_credit.stats.sums["credit_tokens"] > 0
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(after[k], v) for k, v in lora.items() if "lora_B" in k)


def test_empty_completions_train_with_unit_weights(tmp_path, tiny_model_path):
    """Rows whose first turn is only the end-of-turn token (an empty answer) train without error and get W = 1."""
    scripted = scripted_first_turn(SGCDTrainer)

    class EmptyHalf(scripted):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            if num_generations > 1:  # first turn: odd rows answer nothing at all
                ids = [row if i % 2 == 0 else [self.processing_class.eos_token_id] for i, row in enumerate(ids)]
            return ids, logprobs

    trainer = EmptyHalf(
        model=tiny_model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(4),
        args=tiny_args(tmp_path),
        environment_factory=ToyLookupEnv,
    )
    score, apply, build = _record(trainer)
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    output = apply.calls[0][2]
    w = trainer.last_credit.weights
    empty = output["completion_mask"].sum(dim=1) == 1
    assert empty.any()
    assert torch.all(w[empty] == 1.0)
    assert trainer.last_credit.stats.sums["credit_tokens"] > 0  # the non-empty rows still got credit


@pytest.mark.slow
@pytest.mark.ci
def test_dense_scoring_runs_in_the_policys_mixed_precision(tmp_path, tiny_model_path):
    """With `bf16=True` (float32 weights, autocast) the scorer's forwards run in bf16 like the policy's own log-probs,
    although it calls the backbone past accelerate's autocast wrapper of `model.forward`."""
    trainer_cls = scripted_first_turn(SGCDTrainer)
    trainer = trainer_cls(
        model=tiny_model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(4),
        args=tiny_args(tmp_path, bf16=True),
        environment_factory=ToyLookupEnv,
    )
    seen, inside = [], [False]
    score = trainer.credit_scorer.score

    def observed_score(*args, **kwargs):
        inside[0] = True
        try:
            return score(*args, **kwargs)
        finally:
            inside[0] = False

    trainer.credit_scorer.score = observed_score
    layer = trainer.model.model.layers[0].mlp.down_proj
    layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype) if inside[0] else None)
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    assert next(trainer.model.parameters()).dtype == torch.float32
    assert trainer.last_credit.stats.sums["rows_scored"] > 0
    assert seen and set(seen) == {torch.bfloat16}
