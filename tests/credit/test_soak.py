"""Soak (slow suite): 50 training steps of the tiny model against a local server whose fault mode changes every few
steps (ok, hang, 429, 500, garbage, drop). Every step's reference build stays within the step budget, the run
finishes, every failure is counted, and no request body carries a planted secret.

    pytest -m slow tests/credit/test_soak.py -s     # prints the worst build time per fault
"""

import json

import pytest
from datasets import Dataset
from transformers import TrainerCallback

from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_reward
from trl_sgcd import SGCDTrainer
from trl_sgcd.testing.llm_server import FakeLLMServer

STEPS, STEPS_PER_MODE = 50, 3
MODES = ("ok", "hang", "429", "500", "garbage", "drop")
BUDGET, DEADLINE, SLACK = 2.0, 1.0, 1.0
SECRETS = {
    "card": "4111 1111 1111 1111",
    "cvv": "7391",
    "expiry": "11/29",
    "dob": "1987-04-12",
    "address": "975 Sunset Drive",
    "password": "hunter2-Zebra",
    "payment_token": "tok_live_9f8e7d6c5b",
    "email": "mia.li3818@example.com",
    "ssn": "078-05-1120",
    "passport": "X12345678",
    "private_amount": "312.40",  # stored as 312.4 in the private column, written "$312.40"
}


class LeakyLookupEnv(ToyLookupEnv):
    """The toy environment, with secrets in its `reset()` text and in every tool observation."""

    def reset(self, **row):
        super().reset(**row)
        return f"Account note: my account password is {SECRETS['password']}; born on {SECRETS['dob']}."

    def lookup(self, key: str) -> str:
        """Look up a record by its key.

        Args:
            key: The record key, for example "alpha".

        Returns:
            The record as JSON.
        """
        record = json.loads(super().lookup(key))
        record.update(
            payment_token=SECRETS["payment_token"],
            address={"address1": SECRETS["address"], "city": "Austin"},
            dob=SECRETS["dob"],
            ssn=SECRETS["ssn"],
        )
        return json.dumps(record)


def _dataset(n=8):
    keys = ["alpha", "beta", "gamma"]
    rows = []
    for i in range(n):
        key = keys[i % 3]
        text = (
            f"Find the record for key {key}. My card is {SECRETS['card']} exp {SECRETS['expiry']}, CVV "
            f"{SECRETS['cvv']}; email {SECRETS['email']}; passport number is {SECRETS['passport']}. "
            f"I was charged $312.40."
        )
        rows.append({"prompt": [{"role": "user", "content": text}], "target_key": key, "refund": 312.4})
    return Dataset.from_list(rows)


class FaultSchedule(TrainerCallback):
    def __init__(self, server):
        self.server, self.modes = server, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.server.mode = MODES[(state.global_step // STEPS_PER_MODE) % len(MODES)]
        self.modes.append(self.server.mode)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 50 steps: 31 min measured on a 2-core machine at load average ~20
def test_soak_faults_stay_within_the_step_budget(tmp_path, tiny_model_path):
    with FakeLLMServer() as server:
        schedule = FaultSchedule(server)
        args = tiny_args(
            tmp_path,
            max_steps=STEPS,
            max_completion_length=32,
            max_tool_calling_iterations=1,
            per_device_train_batch_size=4,  # one group of 4 per step (2 scripted successes: mixed)
            credit_private_columns=["refund"],
            credit_reference_backend="litellm",
            credit_reference_model="openai/test-model",
            credit_reference_api_base=server.base_url,
            credit_reference_api_key_env=None,  # a keyless local server, declared explicitly
            credit_reference_deadline=DEADLINE,
            credit_reference_retries=2,
            credit_reference_step_budget=BUDGET,
        )
        trainer = scripted_first_turn(SGCDTrainer)(
            model=tiny_model_path,
            reward_funcs=toy_reward,
            args=args,
            train_dataset=_dataset(),
            environment_factory=LeakyLookupEnv,
            callbacks=[schedule],
        )
        trainer.train()
        bodies = list(server.raw_bodies)
        modes_seen = list(server.modes_seen)
    assert trainer.state.global_step == STEPS
    logs = [h for h in trainer.state.log_history if "sgcd/reference/build_s" in h]
    assert len(logs) == STEPS == len(schedule.modes)
    worst = {}
    for mode, log in zip(schedule.modes, logs):
        m = {k.removeprefix("sgcd/reference/"): v for k, v in log.items() if k.startswith("sgcd/reference/")}
        assert m["build_s"] <= BUDGET + SLACK, (mode, m)
        worst[mode] = max(worst.get(mode, 0.0), m["build_s"])
        errors = sum(v for k, v in m.items() if k.startswith("errors/"))
        assert errors == m["fallbacks"], (mode, m)  # every failed group is counted under a class
        if mode == "ok":
            assert m["fallbacks"] == 0, m
        else:
            assert m["fallbacks"] >= 1 and m["attempts"] >= 1, (mode, m)
            kind = {"hang": "timeout", "429": "rate_limited", "500": "server_error"}.get(mode)
            kind = kind or {"garbage": "bad_response", "drop": "connection"}[mode]
            assert m[f"errors/{kind}"] + m["errors/budget_exhausted"] == m["fallbacks"], (mode, m)
    assert sum(h["sgcd/reference/attempts"] for h in logs) == len(bodies)  # every request the server saw is counted
    assert set(modes_seen) == set(MODES)
    for raw in bodies:
        decoded = json.dumps(json.loads(raw), ensure_ascii=False)
        for name, secret in SECRETS.items():
            assert secret not in raw and secret not in decoded, f"{name} leaked"
    print("\nworst reference build per fault (s):", {k: round(v, 2) for k, v in worst.items()})
