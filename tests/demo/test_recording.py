"""The demo's record of its own run: the localization of each scored rollout against its decisive tokens."""

import pytest
import torch

from trl_sgcd.demo.recording import format_lift, lift_summary, rollout_records
from trl_sgcd.envs.airline import airline_tool_schemas
from trl_sgcd.envs.airline_tasks import airline_tasks
from trl_sgcd.envs.decisive import decisive_token_mask
from trl_sgcd.tooluse.expert import expert_conversation, expert_turn_ids


def _expert_batch(tokenizer):
    task = next(t for t in airline_tasks("train") if t["kind"] == "cancel")
    conversation = expert_conversation(task)
    tools = airline_tool_schemas()
    prompt = tokenizer.apply_chat_template(
        conversation[:2], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    full = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=True, return_dict=True)["input_ids"]
    ids = list(full[len(prompt) :])
    tool_mask, pos = [0] * len(ids), 0
    for _, turn in expert_turn_ids(tokenizer, conversation, tools):
        while ids[pos : pos + len(turn)] != turn:
            pos += 1
        tool_mask[pos : pos + len(turn)] = [1] * len(turn)
        pos += len(turn)
    return task, torch.tensor([ids]), torch.tensor([tool_mask])


def _records(tokenizer, weights, task, ids, tool_mask, literals=()):
    from trl_sgcd.credit.scoring.teacher import literal_token_mask

    eligible = tool_mask.bool() & ~literal_token_mask(ids, [list(literals)], tokenizer)  # (1, T)
    prompt = f"<|im_start|>user\n{task['instruction']}<|im_end|>"
    return rollout_records(
        prompts=[prompt],
        completion_ids=ids,
        completion_mask=torch.ones_like(ids),
        tool_mask=tool_mask,
        weights=weights,
        rows=[0],
        eligible=eligible,
        tokenizer=tokenizer,
        step=1,
        seed=task["seed"],
    )


def test_credit_on_the_decisive_tokens_has_lift_above_one(tokenizer):
    task, ids, tool_mask = _expert_batch(tokenizer)
    decisive = torch.tensor([decisive_token_mask(task, ids[0].tolist(), tool_mask[0].tolist(), tokenizer)])
    on_target = torch.where(decisive, 2.0, 1.0)
    (record,) = _records(tokenizer, on_target, task, ids, tool_mask)
    loc = record["localization"]
    assert loc["recall"] == 1.0 and loc["precision"] == 1.0
    assert loc["lift"] == pytest.approx(loc["num_eligible"] / loc["num_decisive"]) and loc["lift"] > 5
    (flat,) = _records(tokenizer, torch.full(ids.shape, 1.5), task, ids, tool_mask)
    assert flat["localization"]["lift"] == pytest.approx(1.0)  # uniform credit: no localisation
    assert len(flat["weights"]) == int(tool_mask.sum())  # weights of eligible tokens only
    # the reservation id masked as a literal: no eligible decisive token left, the lift is undefined
    rid = task["gold_actions"][-1]["arguments"]["reservation_id"]
    (masked,) = _records(tokenizer, on_target, task, ids, tool_mask, literals=[rid])
    assert masked["localization"]["num_decisive"] == 0


def test_lift_summary_and_line():
    assert lift_summary([]) is None and "n/a" in format_lift(None)
    row = {"lift": 3.0, "recall": 1.0, "precision": 0.5, "mass": 1.0, "mass_decisive": 1.0}
    row |= {"num_eligible": 6, "num_decisive": 2, "num_credit": 4}
    log = [{"step": 1, "rows": [{"weights": [2.0], "localization": row}, {"weights": [], "localization": None}]}]
    summary = lift_summary(log)
    assert summary["lift"][:2] == [3.0, 3.0] and summary["num_rollouts"] == 1
    assert "median 3.00" in format_lift(summary) and "over 1 of 1" in format_lift(summary)
