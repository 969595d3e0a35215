"""Evidence: trace rendering, the appendix selection rule, truncation order, sanitize-before-truncate, digest."""

import json

from trl_sgcd.credit.reference.evidence import build_evidence, render_sanitized_trace, select_siblings
from trl_sgcd.credit.reference.sanitize import Sanitizer
from trl_sgcd.credit.reference.traces import render_task, render_trace, trace_steps
from trl_sgcd.credit.types import Rollout, SiblingGroup
from trl_sgcd.testing.samples import PLANTED, sample_group


def _group(completions, success, prompt="Do the task."):
    rollouts = [Rollout(i, prompt, c, float(ok)) for i, (c, ok) in enumerate(zip(completions, success))]
    return SiblingGroup(0, rollouts, list(success))


def _text_rollout(n_chars, tag):
    return f"{tag} " + "x" * n_chars


def _tool_rollout(obs_chars, tag):
    return [
        {
            "role": "assistant",
            "content": tag,
            "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": json.dumps({"q": tag})}}],
        },
        {"role": "tool", "name": "search", "content": "y" * obs_chars},
        {"role": "assistant", "content": "done"},
    ]


# --- rendering ---------------------------------------------------------------------------------------------------------
def test_render_trace_multi_turn():
    completion = sample_group().rollouts[2].completion
    text = render_trace(completion, max_observation_chars=30)
    lines = text.splitlines()
    assert lines[0].startswith("ASSISTANT: Sure (f0).")
    assert lines[1] == 'CALL get_user_details({"user_id": "mia_li_3668"})'
    assert lines[2].startswith("OBS get_user_details: user found; api key sk-proj")
    obs = completion[1]["content"]
    assert lines[2] == f"OBS get_user_details: {obs[:30]}...[truncated {len(obs) - 30} chars]"
    assert lines[3] == 'CALL cancel_reservation({"reason": "change of plan", "reservation_id": "ZFA04Y"})'
    assert lines[-1].startswith("ASSISTANT: I could not cancel it.")


def test_render_trace_plain_string_and_string_arguments():
    assert render_trace("just text", max_observation_chars=5) == "ASSISTANT: just text"
    steps = trace_steps(_tool_rollout(3, "t"))
    assert [s.kind for s in steps] == ["say", "call", "obs", "say"]
    assert steps[1].arg_keys == ("q",)


def test_tool_errors_are_flagged():
    completion = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "book", "arguments": {}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "{'error': 'no seats'}"},
    ]
    steps = trace_steps(completion)
    assert steps[1].name == "book" and steps[1].is_error


def test_render_task_messages():
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_task(prompt) == "system: S\n\nuser: U"
    assert render_task("plain") == "plain"


# --- selection rule (paper, Appendix B) --------------------------------------------------------------------------------
def test_select_all_when_everything_fits():
    assert select_siblings([10, 20, 30, 40], [True, False, True, False], budget=100) == [0, 1, 2, 3]


def test_select_more_successes_keeps_failures_and_shortest_successes():
    lengths = [50, 10, 30, 10, 40, 25]
    success = [True, True, True, True, False, False]
    # failures (4, 5) whole = 65; then shortest successes 1 (10), 3 (10, tie -> index order), 2 (30) does not fit.
    assert select_siblings(lengths, success, budget=90) == [1, 3, 4, 5]


def test_select_more_failures_keeps_successes_and_longest_failures():
    lengths = [20, 50, 10, 40, 40, 30]
    success = [True, False, False, False, False, False]
    # success 0 whole = 20; longest failures: 1 (50) fits -> 70; 3 (40) does not; 4 (40) does not; 5 (30) does not.
    assert select_siblings(lengths, success, budget=75) == [0, 1]
    # A larger budget takes the tie 3/4 in index order first.
    assert select_siblings(lengths, success, budget=115) == [0, 1, 3]


def test_select_equal_classes_treat_successes_as_smaller():
    lengths = [30, 30, 10, 50]
    success = [True, True, False, False]
    assert select_siblings(lengths, success, budget=115) == [0, 1, 3]  # successes whole + the longer failure


def test_select_always_keeps_a_contrast():
    assert select_siblings([100, 100, 100], [True, False, False], budget=120) == [0, 1]  # cheapest, lowest index
    chosen = select_siblings([100, 300, 200], [True, False, False], budget=50)
    assert chosen == [0, 2]  # the success plus the cheapest failure


def test_select_is_deterministic():
    lengths, success = [5, 9, 9, 3, 7, 9], [False, True, True, True, True, False]
    assert len({tuple(select_siblings(lengths, success, 25)) for _ in range(5)}) == 1


# --- build_evidence ----------------------------------------------------------------------------------------------------
def test_observations_are_truncated_before_siblings_are_dropped():
    group = _group([_tool_rollout(4000, f"s{i}") for i in range(2)] + [_tool_rollout(4000, "f")], [True, True, False])
    budget_tokens = 1000  # 3 full traces need ~3 x 1000 tokens: too many; truncated observations fit easily
    evidence = build_evidence(group, sanitizer=Sanitizer(), max_input_tokens=budget_tokens, max_observation_chars=4000)
    assert evidence.sibling_indices == [0, 1, 2]
    assert all("...[truncated" in trace for trace in evidence.traces)


def test_siblings_are_dropped_when_truncation_is_not_enough():
    long_successes = [_text_rollout(2000 + 100 * i, f"s{i}") for i in range(3)]
    group = _group(long_successes + [_text_rollout(1000, "f")], [True, True, True, False])
    evidence = build_evidence(group, sanitizer=Sanitizer(), max_input_tokens=1650, max_observation_chars=512)
    # failures whole (~266 tokens) + the shortest success (~516) fit in 1650 - 400 overhead; the next does not.
    assert evidence.sibling_indices == [0, 3]
    assert evidence.outcomes == [True, False]


def test_task_is_never_truncated():
    task = "Task: " + "t " * 5000
    group = _group([_text_rollout(100, "s"), _text_rollout(100, "f")], [True, False], prompt=task)
    evidence = build_evidence(group, sanitizer=Sanitizer(), max_input_tokens=500, max_observation_chars=64)
    assert evidence.task == task.strip()


def test_sanitize_happens_before_truncation():
    # The card number straddles the observation cut: masked first, so no digit prefix survives the cut.
    obs = "z" * 60 + " card 4111 1111 1111 1111 " + "w" * 200
    completion = [{"role": "tool", "name": "get_user", "content": obs}]
    group = _group([completion, "fail"], [True, False])
    evidence = build_evidence(group, sanitizer=Sanitizer(), max_input_tokens=12000, max_observation_chars=70)
    assert "4111" not in evidence.traces[0]
    assert "4111 1111 1111 1111" in evidence.masked_literals


def test_evidence_masks_planted_values_but_keeps_tool_names():
    group = sample_group()
    private = [group.rollouts[0].row["gold_answer"], group.rollouts[0].row["gold_actions"]]
    evidence = build_evidence(group, sanitizer=Sanitizer(private), max_input_tokens=12000, max_observation_chars=512)
    everything = evidence.task + "\n".join(evidence.traces)
    for value in PLANTED.values():
        assert value not in everything
    assert "CALL cancel_reservation(" in everything  # tool names are policy-visible, never masked
    assert "ZFA04Y" not in everything and "ZFA04Y" in evidence.masked_literals


def test_digest_is_stable_and_content_sensitive():
    def make(tag):
        return build_evidence(
            sample_group(tag=tag), sanitizer=Sanitizer(), max_input_tokens=12000, max_observation_chars=512
        )

    assert make("a").digest == make("a").digest
    assert make("a").digest != make("b").digest


def test_render_sanitized_trace_masks_before_truncating_and_keeps_tool_names():
    obs = "z" * 60 + " card 4111 1111 1111 1111 " + "w" * 200
    completion = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "gold_tool", "arguments": {"q": "x"}}}],
        },
        {"role": "tool", "name": "gold_tool", "content": obs},
    ]
    result = render_sanitized_trace(completion, sanitizer=Sanitizer(["gold_tool"]), max_observation_chars=70)
    assert "4111" not in result.text and "CALL gold_tool(" in result.text
    assert result.masked == ["4111 1111 1111 1111"]


# --- the one tool-error predicate --------------------------------------------------------------------------------------
ERRORS = [
    "{'error': 'no seats'}",
    '{"error": "Reservation not found"}',
    '{"exception": "KeyError"}',
    '{"error": "truncated obs...',
    "Error: flight HAT123 is full",
    "errors: 2",
    "Failed to book: payment declined",
    "Traceback (most recent call last):\n  File ...",
    "Exception: boom",
]
NOT_ERRORS = [
    '{"status": "error-free"}',
    '{"error": null}',
    "Transfer successful",
    "[]",
    "{not json",
    "",
    "ok: failed=0",
]


def test_contrast_and_audit_share_one_tool_error_predicate():
    from trl_sgcd.tooluse.audit import count_tool_errors

    for text, expected in [*((t, True) for t in ERRORS), *((t, False) for t in NOT_ERRORS)]:
        completion = [
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "book", "arguments": {}}}]},
            {"role": "tool", "name": "book", "content": text},
        ]
        assert trace_steps(completion)[1].is_error is expected, text
        assert count_tool_errors(completion) == int(expected), text
