"""`benchmarks/experiment.py`'s credit read-out: each credit step logs where W landed against the verifier's decisive
tokens. Built on a real compact-profile rollout in TRL's layout (no model): credit on the forbidden cancel gives a
lift above 1, credit on the harmless look-up a lift of 0."""

import json
import math
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer

from benchmarks.experiment import track_localization
from trl_sgcd.envs.airline_tasks import airline_tasks
from trl_sgcd.tooluse.models import bundled_tokenizer_dir


def _rollout(tokenizer):
    """A refused-cancel task's failed rollout: look-up, forbidden cancel, answer; (ids, tool_mask, cancel token range)."""
    task = next(t for t in airline_tasks("train", profile="compact") if t["kind"] == "cancel_refused")
    rid = task["gold_actions"][0]["arguments"]["reservation_id"]

    def call(name):
        return (
            f"<tool_call>\n{json.dumps({'name': name, 'arguments': {'reservation_id': rid}})}\n</tool_call><|im_end|>"
        )

    pieces = [
        (call("get_reservation_details"), 1),
        ('\n<|im_start|>tool\n{"status": "active"}<|im_end|>\n<|im_start|>assistant\n', 0),
        (call("cancel_reservation"), 1),
        ('\n<|im_start|>tool\n{"status": "cancelled"}<|im_end|>\n<|im_start|>assistant\n', 0),
        ("Your reservation is cancelled.<|im_end|>", 1),
    ]
    ids, mask, spans = [], [], []
    for text, m in pieces:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        spans.append((len(ids), len(ids) + len(part)))
        ids += part
        mask += [m] * len(part)
    return task, ids, mask, spans


def _fake_trainer(tokenizer, task, ids, mask, weights):
    n = len(ids)
    logged = []
    output = {
        "completion_ids": torch.tensor([ids]),
        "completion_mask": torch.ones(1, n, dtype=torch.long),
        "tool_mask": torch.tensor([mask]),
    }
    trainer = SimpleNamespace(
        processing_class=tokenizer,
        reward_weights=torch.ones(1),
        args=SimpleNamespace(credit_success_threshold=1.0),
        last_credit=SimpleNamespace(rows=[0], eligible=torch.tensor([mask], dtype=torch.bool), weights=weights),
        _log=logged.append,
        _apply_credit=lambda output, batch: output,
    )
    batch = {"inputs": [{"task_id": task["task_id"], "seed": 0}], "rewards_per_func": torch.zeros(1, 1)}
    track_localization(trainer)
    assert trainer._apply_credit(output, batch) is output
    return logged


def test_credit_on_the_forbidden_cancel_lifts_and_credit_on_the_look_up_does_not():
    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir())
    task, ids, mask, spans = _rollout(tokenizer)
    on_cancel = torch.ones(1, len(ids))
    on_cancel[0, spans[2][0] : spans[2][1]] = 2.0
    [metrics] = _fake_trainer(tokenizer, task, ids, mask, on_cancel)
    assert metrics["sgcd/localization/lift"] > 1.0 and metrics["sgcd/localization/pooled_lift"] > 1.0
    assert 0 < metrics["sgcd/localization/decisive_share"] < 1
    eligible = sum(mask)
    assert math.isclose(metrics["sgcd/localization/credit_share"], (spans[2][1] - spans[2][0]) / eligible)

    on_lookup = torch.ones(1, len(ids))
    on_lookup[0, spans[0][0] : spans[0][1]] = 2.0
    [metrics] = _fake_trainer(tokenizer, task, ids, mask, on_lookup)
    assert metrics["sgcd/localization/lift"] == 0.0


def test_a_broken_read_out_is_counted_and_never_stops_the_run():
    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir())
    task, ids, mask, _ = _rollout(tokenizer)
    logged = _fake_trainer(tokenizer, {"task_id": "airline-compact-train-999"}, ids, mask, torch.ones(1, len(ids)))
    assert logged == [{"sgcd/localization/errors": 1.0}]
