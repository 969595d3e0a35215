"""resume_from_checkpoint continues an SGCD run: the resumed next step equals the uninterrupted run's next step,
dynamic sampling included (its resampling stream is saved in sgcd_state.json and picked up where it was)."""

import json
import os

import pytest
import torch

from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward
from trl_sgcd import SGCDTrainer
from trl_sgcd.trainer import SGCD_STATE_FILE


def _alternating(i, rank, rnd):
    """Even rounds: no mixed group (dynamic sampling draws one more round); odd rounds: every group mixed."""
    return rnd % 2 == 1 and i % 2 == 0


def _trainer(output_dir, model_path, **overrides):
    cls = scripted_first_turn(SGCDTrainer, script=_alternating)
    args = tiny_args(output_dir, max_steps=2, max_completion_length=80, credit_dynamic_sampling=True, **overrides)
    return cls(
        model=model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(4),
        args=args,
        environment_factory=ToyLookupEnv,
    )


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.slow
@pytest.mark.ci
def test_resume_matches_uninterrupted_run(tmp_path, tiny_model_path):
    # The uninterrupted run also writes the checkpoint the resumed run starts from (saving changes nothing else).
    straight = _trainer(tmp_path / "straight", tiny_model_path, save_strategy="steps", save_steps=1)
    straight.train()
    checkpoint = tmp_path / "straight" / "checkpoint-1"
    state = json.loads((checkpoint / SGCD_STATE_FILE).read_text())
    assert state["reference_builder"]["stats"]["groups"] > 0
    assert state["resample"] == {"epoch": 1, "consumed": 1}  # one extra round drawn per step

    resumed = _trainer(tmp_path / "resumed", tiny_model_path, save_strategy="no")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # The credit counters came back from the checkpoint and kept counting.
    assert resumed.reference_builder.stats["groups"] > state["reference_builder"]["stats"]["groups"]
    assert resumed._credit_stream.state_dict() == straight._credit_stream.state_dict() == {"epoch": 1, "consumed": 2}
    assert _losses(resumed)[-1] == _losses(straight)[-1]
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert os.path.exists(checkpoint / "trainer_state.json")
