"""Tool-use audit on constructed rollouts: zero-tool share, tools per success, failure rate, per-category success."""

import math

import pytest

from trl_sgcd.tooluse.audit import count_tool_calls, count_tool_errors, is_tool_error, tool_use_audit


def _call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _tool(content):
    return {"role": "tool", "name": "t", "content": content}


NO_TOOL = [{"role": "assistant", "content": "Your balance is $112."}]
TWO_TOOLS = [
    {"role": "assistant", "content": "", "tool_calls": [_call("get_reservation_details", reservation_id="ABC123")]},
    _tool('{"reservation_id": "ABC123"}'),
    {"role": "assistant", "content": "", "tool_calls": [_call("cancel_reservation", reservation_id="ABC123")]},
    _tool('{"status": "cancelled"}'),
    {"role": "assistant", "content": "Cancelled."},
]
ONE_ERROR = [
    {"role": "assistant", "content": "", "tool_calls": [_call("get_user_details", user_id="x"), _call("nope")]},
    _tool('{"error": "user \'x\' not found"}'),
    _tool("{'error': 'Tool nope not found.'}"),  # what TRL writes when a tool raises
    {"role": "assistant", "content": "I could not find you."},
]
THREE_TOOLS = [
    {"role": "assistant", "content": "", "tool_calls": [_call("a"), _call("b"), _call("c")]},
    _tool("[]"),
    _tool("Transfer successful"),
    _tool("Error: bad date"),
    {"role": "assistant", "content": "Done."},
]


def test_counts():
    assert [count_tool_calls(c) for c in (NO_TOOL, TWO_TOOLS, ONE_ERROR, THREE_TOOLS)] == [0, 2, 2, 3]
    assert [count_tool_errors(c) for c in (NO_TOOL, TWO_TOOLS, ONE_ERROR, THREE_TOOLS)] == [0, 0, 2, 1]
    text = '<tool_call>\n{}\n</tool_call><tool_response>\n{"error": "x"}\n</tool_response><tool_call>{}</tool_call>'
    assert count_tool_calls(text) == 2 and count_tool_errors(text) == 1 and count_tool_calls("plain answer") == 0


def test_is_tool_error():
    assert is_tool_error('{"error": "x"}') and is_tool_error("{'error': 'x'}") and is_tool_error({"error": 1})
    assert is_tool_error("Error: boom") and is_tool_error([{"type": "text", "text": '{"error": "x"}'}])
    assert not is_tool_error('{"status": "error-free"}') and not is_tool_error("[]") and not is_tool_error("{not json")
    assert not is_tool_error("Transfer successful") and not is_tool_error(None)


def test_audit_on_constructed_rollouts():
    completions = [NO_TOOL, TWO_TOOLS, ONE_ERROR, THREE_TOOLS, NO_TOOL]
    rewards = [1.0, 1.0, 0.0, 1.0, 0.0]
    categories = ["information", "action", "action", "action", "no_action"]
    audit = tool_use_audit(completions, rewards, categories)
    assert audit["success_rate"] == pytest.approx(3 / 5)
    assert audit["zero_tool_success_share"] == pytest.approx(1 / 3)  # successes: NO_TOOL, TWO_TOOLS, THREE_TOOLS
    assert audit["tools_per_success"] == pytest.approx((0 + 2 + 3) / 3)
    assert audit["tool_failure_rate"] == pytest.approx(3 / 7)  # 3 error observations over 0+2+2+3+0 calls
    assert audit["tools_per_rollout"] == pytest.approx(7 / 5)
    assert (audit["num_rollouts"], audit["num_successes"]) == (5, 3)
    assert audit["success/action"] == pytest.approx(2 / 3)
    assert audit["success/information"] == 1.0 and audit["success/no_action"] == 0.0
    assert audit["zero_tool_success_share/information"] == 1.0 and audit["zero_tool_success_share/action"] == 0.0


def test_collapse_and_threshold():
    collapsed = tool_use_audit([NO_TOOL] * 4, [1.0, 1.0, 0.0, 0.0])
    assert collapsed["zero_tool_success_share"] == 1.0 and collapsed["tools_per_success"] == 0.0
    assert "success/action" not in collapsed
    partial = tool_use_audit([TWO_TOOLS, NO_TOOL], [0.5, 0.4], success_threshold=0.5)
    assert partial["success_rate"] == 0.5 and partial["tools_per_success"] == 2.0


def test_edge_cases():
    empty = tool_use_audit([NO_TOOL, NO_TOOL], [0.0, math.nan])  # NaN rewards (TRL's None) are failures
    assert empty["success_rate"] == 0.0 and empty["zero_tool_success_share"] == 0.0
    assert empty["tools_per_success"] == 0.0 and empty["tool_failure_rate"] == 0.0
    strings = tool_use_audit(["<tool_call>{}</tool_call><tool_response>ok</tool_response>done", "just text"], [1, 1])
    assert strings["zero_tool_success_share"] == 0.5 and strings["tools_per_success"] == 0.5
    with pytest.raises(ValueError):
        tool_use_audit([NO_TOOL], [1.0, 0.0])
    with pytest.raises(ValueError):
        tool_use_audit([NO_TOOL], [1.0], ["a", "b"])
