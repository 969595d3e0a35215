"""Sample sibling groups for tests and benchmarks: a mixed airline-style group with planted secrets.

`sample_group()` builds successful and failed rollouts whose prompts, assistant text and tool observations carry the
values of `PLANTED` (a card, an API key, a password, an email, a phone number, a gold answer), so a test can check
that none of them reaches an LLM request.
"""

from __future__ import annotations

import json

__all__ = ["PLANTED", "sample_group"]

PLANTED = {
    "card": "4111 1111 1111 1111",
    "api_key": "sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2",
    "password": "hunter2-Zebra!",
    "email": "mia.li@example.com",
    "phone": "+1 415 555 0123",
    "gold": "refund of 345 dollars to the original card",
}


def _call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _success_rollout(tag: str) -> list[dict]:
    return [
        {
            "role": "assistant",
            "content": f"Let me look up your profile ({tag}).",
            "tool_calls": [_call("get_user_details", user_id="mia_li_3668")],
        },
        {
            "role": "tool",
            "name": "get_user_details",
            "content": json.dumps(
                {
                    "user_id": "mia_li_3668",
                    "email": PLANTED["email"],
                    "phone": PLANTED["phone"],
                    "payment": {"card_number": PLANTED["card"]},
                    "reservations": ["ZFA04Y"],
                }
            ),
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [_call("get_reservation_details", reservation_id="ZFA04Y")],
        },
        {
            "role": "tool",
            "name": "get_reservation_details",
            "content": "{'reservation_id': 'ZFA04Y', 'status': 'booked', 'insurance': 'yes'}",
        },
        {"role": "assistant", "content": "", "tool_calls": [_call("cancel_reservation", reservation_id="ZFA04Y")]},
        {"role": "tool", "name": "cancel_reservation", "content": "{'status': 'cancelled'}"},
        {"role": "assistant", "content": f"Done: your reservation is cancelled, {PLANTED['gold']}."},
    ]


def _failed_rollout(tag: str) -> list[dict]:
    return [
        {
            "role": "assistant",
            "content": f"Sure ({tag}). Your password: {PLANTED['password']} is not needed.",
            "tool_calls": [_call("get_user_details", user_id="mia_li_3668")],
        },
        {
            "role": "tool",
            "name": "get_user_details",
            "content": f"user found; api key {PLANTED['api_key']}; contact {PLANTED['email']}",
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [_call("cancel_reservation", reservation_id="ZFA04Y", reason="change of plan")],
        },
        {
            "role": "tool",
            "name": "cancel_reservation",
            "content": "{'error': 'Cancellation requires the reservation details to be checked first'}",
        },
        {"role": "assistant", "content": f"I could not cancel it. Call me at {PLANTED['phone']}."},
    ]


def sample_group(group_index: int = 0, *, num_success: int = 2, num_failed: int = 2, tag: str = ""):
    """A mixed airline-style sibling group with planted secrets in observations and assistant text."""
    from trl_sgcd.credit.types import Rollout, SiblingGroup

    prompt = [
        {"role": "system", "content": "You are an airline agent. Use the tools."},
        {"role": "user", "content": f"Please cancel my reservation ZFA04Y. I am mia_li_3668. {tag}"},
    ]
    row = {
        "task_id": f"t{group_index}",
        "gold_answer": PLANTED["gold"],
        "gold_actions": [{"name": "cancel_reservation", "arguments": {"reservation_id": "ZFA04Y"}}],
    }
    completions = [_success_rollout(f"{tag}s{k}") for k in range(num_success)]
    completions += [_failed_rollout(f"{tag}f{k}") for k in range(num_failed)]
    success = [True] * num_success + [False] * num_failed
    rollouts = [
        Rollout(group_index * len(success) + k, prompt, c, float(ok), dict(row))
        for k, (c, ok) in enumerate(zip(completions, success))
    ]
    return SiblingGroup(group_index=group_index, rollouts=rollouts, success=success)
