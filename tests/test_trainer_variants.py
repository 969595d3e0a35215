"""SGCDTrainer variants on the tiny model: a LoRA policy, empty completions, bf16 autocast."""

import math

import pytest
import torch

from tests.trainer_runs import _record
from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward
from trl_sgcd import SGCDTrainer


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
