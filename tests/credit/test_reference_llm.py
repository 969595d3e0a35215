"""The litellm reference backend with a stub client (no network): the answer parsed and sanitized, fallbacks, stats
and checkpoint state, the step budget, per-step metrics and the failure warning. Real HTTP is in test_llm_server.py."""

import json

import pytest

from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder, merge_step_metrics
from trl_sgcd.credit.reference.llm import LLMResult
from trl_sgcd.credit.reference.prompt import parse_reference_sections
from trl_sgcd.testing.llm_server import VALID_REFERENCE
from trl_sgcd.testing.samples import PLANTED, sample_group


class RecordingClient:
    """Stub LLM client: records requests, answers from a list (or an exception)."""

    def __init__(self, answers):
        self.answers = answers
        self.requests = []
        self.budgets = []

    def complete_many(self, requests, budget=None):
        self.requests.extend(requests)
        self.budgets.append(budget)
        if isinstance(self.answers, Exception):
            raise self.answers
        return [
            a if isinstance(a, LLMResult) else LLMResult(a, None, 0.1, 10, 5, None, False, 1) for a in self.answers
        ]


def test_llm_answer_is_parsed_and_sanitized():
    leaky = VALID_REFERENCE.replace("the reservation identifier", f"`ZFA04Y` and {PLANTED['email']}")
    client = RecordingClient([leaky])
    builder = SiblingReferenceBuilder("litellm", llm_client=client, private_columns=["gold_actions"])
    ref = builder.build([sample_group()])[0]
    assert ref.source == "llm" and ref.prompt_tokens == 10 and ref.latency_s == pytest.approx(0.1)
    assert "ZFA04Y" not in ref.text and PLANTED["email"] not in ref.text
    assert "[PRIVATE]" in ref.text  # evidence literals are masked in the answer too
    key, messages = client.requests[0]
    assert len(key) > 64 and messages[0]["role"] == "system"


@pytest.mark.parametrize("fallback, source", [("contrast", "fallback"), ("none", "none")])
def test_failures_fall_back(fallback, source):
    answers = [
        "garbage",
        "",
        LLMResult(None, "timeout: no answer within 1 s", 1.0, None, None, None, False, 1, timed_out=True),
    ]
    builder = SiblingReferenceBuilder("litellm", llm_client=RecordingClient(answers), fallback=fallback)
    refs = builder.build([sample_group(g, tag=str(g)) for g in range(3)])
    assert [r.source for r in refs] == [source] * 3
    if source == "none":
        assert all(r.text == "" for r in refs)
    else:
        assert all(parse_reference_sections(r.text) for r in refs)
    stats = builder.last_build_stats
    assert stats[source] == 3 and stats["errors"] == 3 and stats["timeouts"] == 1


def test_client_exception_never_escapes():
    builder = SiblingReferenceBuilder("litellm", llm_client=RecordingClient(RuntimeError("boom")))
    refs = builder.build([sample_group()])
    assert refs[0].source == "fallback"


def test_stats_accumulate_and_round_trip():
    answers = [LLMResult(VALID_REFERENCE, None, 0.5, 100, 20, 0.01, False, 1)]
    builder = SiblingReferenceBuilder("litellm", llm_client=RecordingClient(answers))
    builder.build([sample_group()])
    builder.build([sample_group()])
    assert builder.stats["llm"] == 2 and builder.stats["requests"] == 2
    assert builder.stats["cost_usd"] == pytest.approx(0.02) and builder.stats["prompt_tokens"] == 200
    state = json.loads(json.dumps(builder.state_dict()))  # checkpoint-friendly
    fresh = SiblingReferenceBuilder()
    fresh.load_state_dict(state)
    assert fresh.stats == builder.stats


def test_unknown_cost_is_none_not_zero():
    answers = [LLMResult(VALID_REFERENCE, None, 0.5, 100, 20, None, False, 1)]
    builder = SiblingReferenceBuilder("litellm", llm_client=RecordingClient(answers))
    ref = builder.build([sample_group()])[0]
    assert ref.cost_usd is None and builder.stats["cost_usd"] is None


def test_client_gets_what_evidence_building_left_of_the_budget():
    client = RecordingClient([VALID_REFERENCE])
    SiblingReferenceBuilder("litellm", llm_client=client, step_budget=5.0).build([sample_group()])
    (budget,) = client.budgets
    assert 4.0 < budget <= 5.0


def test_step_metrics_count_each_failure_class_and_reset_per_build():
    answers = [
        VALID_REFERENCE,
        "not five sections",
        LLMResult(
            None,
            "RateLimitError: x",
            0.1,
            None,
            None,
            None,
            False,
            4,
            attempt_errors=("rate_limited",) * 4,
            error_class="rate_limited",
        ),
        LLMResult(
            None,
            "timeout",
            1.0,
            None,
            None,
            None,
            False,
            2,
            timed_out=True,
            attempt_errors=("timeout",) * 2,
            error_class="timeout",
            budget_exhausted=True,
        ),
        LLMResult(VALID_REFERENCE, None, 0.0, 0, 0, 0.0, True, 0),
    ]
    builder = SiblingReferenceBuilder("litellm", llm_client=RecordingClient(answers))
    builder.build([sample_group(g, tag=str(g)) for g in range(5)])
    m = {k.removeprefix("sgcd/reference/"): v for k, v in builder.step_metrics().items()}
    assert (m["requests"], m["attempts"], m["cache_hits"]) == (4, 1 + 1 + 4 + 2, 1)
    assert (m["rate_limited"], m["timeouts"], m["budget_exhausted"], m["fallbacks"]) == (4, 2, 1, 3)
    assert (m["errors/malformed"], m["errors/rate_limited"], m["errors/timeout"]) == (1, 1, 1)
    assert sum(v for k, v in m.items() if k.startswith("errors/")) == 3
    builder.llm_client.answers = [VALID_REFERENCE]
    builder.build([sample_group()])
    assert builder.step_metrics()["sgcd/reference/fallbacks"] == 0  # per step, not cumulative
    assert builder.stats["errors"] == 3 and builder.stats["errors/timeout"] == 1  # cumulative


def test_step_metrics_merge_over_ranks_and_contrast_logs_none():
    assert SiblingReferenceBuilder().step_metrics() == {}
    a = {"sgcd/reference/attempts": 2.0, "sgcd/reference/build_s": 1.5}
    b = {"sgcd/reference/attempts": 3.0, "sgcd/reference/build_s": 0.5}
    assert merge_step_metrics([a, b]) == {"sgcd/reference/attempts": 5.0, "sgcd/reference/build_s": 1.5}


def test_failure_warning_names_endpoint_error_and_field(caplog):
    answers = [LLMResult(None, "AuthenticationError: 401", 0.1, None, None, None, False, 1, error_class="auth")]
    client = RecordingClient(answers)
    client.endpoint, client.model = "http://llm.internal:8000/v1", "openai/x"
    with caplog.at_level("WARNING", logger="trl_sgcd.credit.reference.builder"):
        SiblingReferenceBuilder("litellm", llm_client=client).build([sample_group()])
    (message,) = [r.message for r in caplog.records]
    assert "http://llm.internal:8000/v1" in message and "AuthenticationError: 401" in message
    assert "credit_reference_api_key_env" in message and "1 of 1 group(s) failed" in message
