"""Soak (slow suite): 50 training steps of the tiny model against a real local HTTP server whose fault changes every
step (hang, slow drip, 500, 429 with Retry-After, dropped connection, garbage, success), with secrets planted in the
prompts and in every tool observation, then a resume from the step-25 checkpoint in a fresh trainer.

- every step's reference build stays within the configured budget (plus `SLACK` for evidence and parsing);
- every failure is counted in the LOGGED `sgcd/reference/*` metrics, step by step, and the counts match what the
  server served that step (requests, timeouts, rate limits, the failure class of the group);
- the client waits at least half the `Retry-After` the 429 answers ask for (its jitter floor);
- no request body carries a planted literal (raw or JSON-decoded);
- training finishes, and the resumed run logs the same losses and reference metrics and ends with the same
  parameters as the uninterrupted one (the fault schedule is a function of the step, so both meet the same faults).

The dataset has one prompt per step, so the whole run is one epoch: TRL's `RepeatSampler` draws each epoch's order
from a generator that a resumed run does not fast-forward, so a resume in a later epoch sees other prompts (measured:
with 8 prompts, step 26 got "alpha" instead of "beta" and its loss differed at the fourth digit).
Not in CI: 7 min 26 s and 13 min 8 s (two runs) on the 2-core machine at load average 2-3, the 50 steps plus the
25 resumed ones (`/usr/bin/time` around the pytest command).

    pytest -m slow tests/credit/test_soak.py -s     # prints the worst build time per fault
"""

import json
import os
from collections import Counter

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_reward
from trl_sgcd import SGCDTrainer
from trl_sgcd.testing.llm_server import FakeLLMServer

STEPS = int(os.environ.get("SGCD_SOAK_STEPS", 50))  # fewer for a quick check of the test itself (14: two rotations)
MODES = ("hang", "drip", "500", "429", "drop", "garbage", "ok")
FAILURE_CLASS = {
    "hang": "timeout",
    "drip": "timeout",
    "500": "server_error",
    "429": "rate_limited",
    "drop": "connection",
    "garbage": "bad_response",
}
BUDGET, DEADLINE, RETRIES, SLACK = 2.0, 1.0, 2, 1.0
RETRY_AFTER = 1  # seconds, in the 429 answers' Retry-After header
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


def mode_of_step(step: int) -> str:
    """The fault of training step `step` (1-based): a function of the step only, so a resumed run meets the same."""
    return MODES[(step - 1) % len(MODES)]


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


def _dataset(n=STEPS):
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
    """Sets the server's fault, and its request tag, to the step about to run."""

    def __init__(self, server):
        self.server = server

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step + 1
        self.server.mode, self.server.tag = mode_of_step(step), step


def _trainer(output_dir, model_path, server, **overrides):
    args = tiny_args(
        output_dir,
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
        credit_reference_retries=RETRIES,
        credit_reference_step_budget=BUDGET,
        **overrides,
    )
    return scripted_first_turn(SGCDTrainer)(
        model=model_path,
        reward_funcs=toy_reward,
        args=args,
        train_dataset=_dataset(),
        environment_factory=LeakyLookupEnv,
        callbacks=[FaultSchedule(server)],
    )


def _reference_logs(trainer) -> dict[int, dict[str, float]]:
    """Step -> its logged `sgcd/reference/<name>` values (prefix removed), from the trainer's log history."""
    return {
        h["step"]: {k.removeprefix("sgcd/reference/"): v for k, v in h.items() if k.startswith("sgcd/reference/")}
        for h in trainer.state.log_history
        if "sgcd/reference/build_s" in h
    }


def _losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def _check_step(step: int, m: dict, served: list[str], times: list[float]):
    """The logged metrics of one step against what the server served that step."""
    mode = mode_of_step(step)
    assert m["build_s"] <= BUDGET + SLACK, (step, mode, m)
    assert set(served) <= {mode}, (step, mode, served)
    assert m["attempts"] == len(served), (step, mode, m, served)  # every request the server saw is counted
    errors = sum(v for k, v in m.items() if k.startswith("errors/"))
    assert errors == m["fallbacks"], (step, mode, m)  # every failed group is counted under a class
    if mode == "ok":
        assert m["fallbacks"] == 0 and m["requests"] == len(served) == 1, (step, m)
        return
    assert m["fallbacks"] == 1 and len(served) >= 1, (step, mode, m)  # one group, failed, after >= 1 attempt
    kind = FAILURE_CLASS[mode]
    assert m[f"errors/{kind}"] + m["errors/budget_exhausted"] == 1, (step, mode, m)
    if kind == "timeout":  # every attempt met the hang / the drip and was cut at its deadline (or the budget)
        assert m["timeouts"] == len(served), (step, mode, m)
    if mode == "429":
        assert m["rate_limited"] == len(served) and m["errors/rate_limited"] == 1, (step, m)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(gap >= 0.5 * RETRY_AFTER for gap in gaps), (step, gaps)  # Retry-After honoured (jitter floor)
    else:
        assert m["rate_limited"] == 0, (step, mode, m)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 7-13 min measured on a 2-core machine at load average 2-3
def test_soak_faults_stay_within_the_budget_and_resume_identically(tmp_path, tiny_model_path):
    with FakeLLMServer(retry_after=RETRY_AFTER, drip_interval=0.25) as server:
        straight = _trainer(
            tmp_path / "straight", tiny_model_path, server, save_strategy="steps", save_steps=STEPS // 2
        )
        straight.train()
        served_straight = len(server.raw_bodies)
        resumed = _trainer(tmp_path / "resumed", tiny_model_path, server, save_strategy="no")
        resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / f"checkpoint-{STEPS // 2}"))
        bodies, modes_seen, tags = list(server.raw_bodies), list(server.modes_seen), list(server.tags)
        times = list(server.request_times)

    # the uninterrupted run: every step within budget, every failure counted as the server served it
    assert straight.state.global_step == STEPS
    logs = _reference_logs(straight)
    assert sorted(logs) == list(range(1, STEPS + 1))
    per_step = {step: [i for i in range(served_straight) if tags[i] == step] for step in logs}
    assert sum(map(len, per_step.values())) == served_straight  # no request outside a step
    totals, expected = Counter(), Counter()
    worst = {}
    for step, m in logs.items():
        _check_step(step, m, [modes_seen[i] for i in per_step[step]], [times[i] for i in per_step[step]])
        mode = mode_of_step(step)
        worst[mode] = max(worst.get(mode, 0.0), m["build_s"])
        totals.update({k: v for k, v in m.items() if k.startswith("errors/")})
        if mode != "ok":
            expected[f"errors/{FAILURE_CLASS[mode]}"] += 1
    budget_cut = totals.pop("errors/budget_exhausted", 0)
    assert (
        sum(totals.values()) + budget_cut == sum(expected.values()) == sum(m != "ok" for m in map(mode_of_step, logs))
    )
    for name, count in expected.items():
        assert count - budget_cut <= totals[name] <= count, (name, totals, expected)
    assert set(modes_seen) == set(MODES)

    # the resumed run: steps 26..50 meet the same faults and log the same losses, metrics and final parameters
    assert resumed.state.global_step == STEPS
    resumed_logs, half = _reference_logs(resumed), STEPS // 2
    for step in range(half + 1, STEPS + 1):
        ours, theirs = resumed_logs[step], logs[step]
        assert ours["fallbacks"] == theirs["fallbacks"] and ours["requests"] == theirs["requests"], (
            step,
            ours,
            theirs,
        )
        mine = [i for i in range(served_straight, len(bodies)) if tags[i] == step]
        _check_step(step, ours, [modes_seen[i] for i in mine], [times[i] for i in mine])
    straight_losses, resumed_losses = _losses(straight), _losses(resumed)
    assert len(straight_losses) == STEPS
    assert [resumed_losses[s] for s in range(half + 1, STEPS + 1)] == [
        straight_losses[s] for s in range(half + 1, STEPS + 1)
    ]
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name

    # the leakage boundary: no planted literal in any request body of either run
    for raw in bodies:
        decoded = json.dumps(json.loads(raw), ensure_ascii=False)
        for name, secret in SECRETS.items():
            assert secret not in raw and secret not in decoded, f"{name} leaked"
    print("\nworst reference build per fault (s):", {k: round(v, 2) for k, v in worst.items()})
