"""Trained trainers for the trainer tests, and recorders of what they called.

`trained(name, **config)` (a module-scoped fixture in `tests/conftest.py`) trains one tiny-model run per name and
module, shared by the module's tests; `_Run` keeps what the run saw: scorer / credit / builder calls, GRPO's
rounds (before credit), the final batches and the loss inputs.
"""

from contextlib import contextmanager

import torch
from trl import GRPOTrainer

from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward
from trl_sgcd import SGCDTrainer


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
