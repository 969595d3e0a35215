"""Credit references without a network: the contrast backend, the prompt and its parser, fallbacks with a stub client,
stats and checkpoint state. Real HTTP through litellm is in test_llm_server.py."""

import json

import pytest

from trl_sgcd.credit.evidence import build_evidence
from trl_sgcd.credit.llm import LLMResult
from trl_sgcd.credit.llm_result import ANSWER_BYTES_PER_TOKEN, merge_step_metrics
from trl_sgcd.credit.prompt import SECTION_TITLES, parse_reference_sections, render_reference_messages
from trl_sgcd.credit.reference import CreditReference, SiblingReferenceBuilder, cap_reference
from trl_sgcd.credit.sanitize import Sanitizer
from trl_sgcd.credit.siblings import Rollout, SiblingGroup
from trl_sgcd.testing.llm_server import VALID_REFERENCE
from trl_sgcd.testing.samples import PLANTED, sample_group


def _call(name, **args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


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


# --- prompt and parser -------------------------------------------------------------------------------------------------
def test_prompt_has_role_rules_sections_and_siblings():
    evidence = build_evidence(sample_group(), sanitizer=Sanitizer(), max_input_tokens=12000, max_observation_chars=512)
    system, user = render_reference_messages(evidence)
    assert system["role"] == "system" and user["role"] == "user"
    assert "training-time credit analyst" in system["content"]
    assert "Use only information present in the visible traces" in system["content"]
    assert (
        "Do not quote hidden labels, evaluator or oracle reports, credentials, or final answer literals"
        in system["content"]
    )
    for title in SECTION_TITLES:
        assert f"## {title}" in system["content"]
    assert evidence.task in user["content"]
    assert user["content"].count('outcome="success"') == 2 and user["content"].count('outcome="failure"') == 2


def test_parse_sections():
    sections = parse_reference_sections(VALID_REFERENCE)
    assert list(sections) == list(SECTION_TITLES)
    assert sections["Deviation points"].startswith("- step 2: called cancel_reservation")


def test_parse_accepts_numbered_and_bold_headers():
    text = "Intro\n**1. State checks**\n- a\n### 2) Successful action branches:\n- b\nDeviation points\n- c"
    sections = parse_reference_sections(text)
    assert sections["State checks"] == "- a" and sections["Successful action branches"] == "- b"
    assert sections["Deviation points"] == "- c" and sections["Failed branches and why"] == ""


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "no sections at all",
        "## State checks\n- a\n## Deviation points\n- b",
        "## State checks\n\n## Deviation points\n\n## Failed branches and why\n- x",
    ],
)
def test_parse_rejects_malformed(text):
    assert parse_reference_sections(text) is None


# --- contrast backend --------------------------------------------------------------------------------------------------
def test_contrast_is_deterministic_and_parses():
    groups = [sample_group(0), sample_group(1, num_success=1, num_failed=3)]
    first = SiblingReferenceBuilder().build(groups)
    second = SiblingReferenceBuilder().build([sample_group(0), sample_group(1, num_success=1, num_failed=3)])
    assert [r.text for r in first] == [r.text for r in second]
    for ref, group in zip(first, groups):
        assert ref.source == "contrast" and ref.group_index == group.group_index
        assert parse_reference_sections(ref.text) is not None
        assert all(ref.sections[t] for t in SECTION_TITLES)


def test_contrast_names_the_deviation_step():
    prompt = "Cancel reservation R1."
    good = [
        {"role": "assistant", "content": "", "tool_calls": [_call("get_user_details", user_id="u")]},
        {"role": "tool", "name": "get_user_details", "content": "{}"},
        {"role": "assistant", "content": "", "tool_calls": [_call("get_reservation_details", reservation_id="R1")]},
        {"role": "tool", "name": "get_reservation_details", "content": "{'status': 'booked'}"},
        {"role": "assistant", "content": "", "tool_calls": [_call("cancel_reservation", reservation_id="R1")]},
        {"role": "tool", "name": "cancel_reservation", "content": "{'status': 'cancelled'}"},
        {"role": "assistant", "content": "Cancelled."},
    ]
    bad = [
        good[0],
        good[1],
        {"role": "assistant", "content": "", "tool_calls": [_call("cancel_reservation", reservation_id="R1")]},
        {"role": "tool", "name": "cancel_reservation", "content": "{'error': 'details not checked'}"},
        {"role": "assistant", "content": "Sorry."},
    ]
    group = SiblingGroup(0, [Rollout(0, prompt, good, 1.0), Rollout(1, prompt, bad, 0.0)], [True, False])
    ref = SiblingReferenceBuilder().build([group])[0]
    deviation = ref.sections["Deviation points"]
    assert "step 2: called cancel_reservation where successes called get_reservation_details" in deviation
    assert (
        "get_user_details(user_id) -> get_reservation_details(reservation_id)"
        in ref.sections["Successful action branches"]
    )
    assert "details not checked" in ref.sections["Failed branches and why"]
    assert "get_reservation_details(reservation_id)" in ref.sections["State checks"]


def test_contrast_shapes_not_values_and_no_planted_literals():
    builder = SiblingReferenceBuilder(private_columns=["gold_answer", "gold_actions"])
    ref = builder.build([sample_group()])[0]
    for value in [*PLANTED.values(), "ZFA04Y", "mia_li_3668"]:
        assert value not in ref.text
    assert "cancel_reservation(reservation_id)" in ref.text
    assert PLANTED["card"] in ref.masked_literals and PLANTED["gold"] in ref.masked_literals


def test_non_mixed_group_gets_none():
    group = sample_group(num_success=2, num_failed=0)
    ref = SiblingReferenceBuilder().build([group])[0]
    assert ref.source == "none" and ref.text == ""


def test_reference_is_capped(tokenizer):
    ref = SiblingReferenceBuilder(max_reference_tokens=40).build([sample_group()])[0]
    assert 0 < len(ref.text) <= 40 * 4  # ~4 characters per token without a tokenizer
    ref = SiblingReferenceBuilder(max_reference_tokens=7, tokenizer=tokenizer).build([sample_group()])[0]
    assert len(tokenizer(ref.text, add_special_tokens=False)["input_ids"]) <= 7 and ref.text.startswith("## State")


def test_cap_reference_cuts_bytes_before_tokenizing():
    class CountingTokenizer:
        seen = 0

        def __call__(self, text, add_special_tokens=False):
            self.seen = max(self.seen, len(text.encode()))
            return {"input_ids": list(text.encode())}

        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode(errors="ignore")

    tok = CountingTokenizer()
    huge = "## State checks\n" + "é" * 5_000_000  # a 10 MB answer
    capped = cap_reference(huge, tok, 16)
    assert len(capped.encode()) <= 16 and tok.seen <= ANSWER_BYTES_PER_TOKEN * 16
    assert cap_reference("short", tok, 16) == "short"


# --- litellm backend with a stub client --------------------------------------------------------------------------------
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


def test_from_config(monkeypatch, tmp_path):
    from trl_sgcd.config import SGCDConfig

    monkeypatch.setenv("MY_REF_KEY", "sk-test-not-real")
    args = SGCDConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        credit_reference_backend="litellm",
        credit_reference_model="openai/test",
        credit_reference_api_base="http://127.0.0.1:9/v1",
        credit_reference_api_key_env="MY_REF_KEY",
        credit_reference_deadline=3.0,
        credit_reference_concurrency=4,
        credit_reference_max_tokens=64,
        credit_reference_fallback="none",
        credit_private_columns=["gold_answer"],
        credit_observation_max_chars=100,
    )
    builder = SiblingReferenceBuilder.from_config(args)
    assert builder.backend == "litellm" and builder.fallback == "none" and builder.private_columns == ("gold_answer",)
    assert builder.llm_client.api_key == "sk-test-not-real" and builder.llm_client.deadline == 3.0
    assert builder.llm_client.concurrency == 4 and builder.llm_client.max_tokens == 64
    assert builder.observation_max_chars == 100 and builder.max_reference_tokens == 64
    assert builder.step_budget == args.credit_reference_step_budget == 60.0


def _litellm_config(tmp_path, **kwargs):
    from trl_sgcd.config import SGCDConfig

    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", credit_reference_backend="litellm")
    return SGCDConfig(**{**base, "credit_reference_model": "openai/test", **kwargs})


def test_missing_api_key_variable_is_a_value_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SGCD_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="credit_reference_api_key_env='SGCD_UNSET_KEY'"):
        _litellm_config(tmp_path, credit_reference_api_key_env="SGCD_UNSET_KEY")
    args = _litellm_config(
        tmp_path, credit_reference_api_key_env=None, credit_reference_api_base="http://127.0.0.1:9/v1"
    )
    builder = SiblingReferenceBuilder.from_config(args)  # a keyless local server, declared explicitly
    assert builder.llm_client.api_key == "EMPTY"
    monkeypatch.setenv("SGCD_UNSET_KEY", "sk-test")
    args = _litellm_config(tmp_path, credit_reference_api_key_env="SGCD_UNSET_KEY")
    monkeypatch.delenv("SGCD_UNSET_KEY")  # unset after the config was made: the trainer's builder refuses too
    with pytest.raises(ValueError, match="SGCD_UNSET_KEY"):
        SiblingReferenceBuilder.from_config(args)
    assert _litellm_config(tmp_path, credit_mode="off", credit_reference_api_key_env="SGCD_UNSET_KEY")  # no LLM call


@pytest.mark.parametrize("budget", [0.0, -1.0])
def test_step_budget_must_be_positive(tmp_path, budget):
    with pytest.raises(ValueError, match="credit_reference_step_budget"):
        _litellm_config(tmp_path, credit_reference_step_budget=budget)


def test_invalid_backend_and_missing_model():
    with pytest.raises(ValueError, match="backend"):
        SiblingReferenceBuilder("gpt")
    with pytest.raises(ValueError, match="model"):
        SiblingReferenceBuilder("litellm")


def test_credit_reference_defaults():
    ref = CreditReference(text="", sections={}, masked_literals=[], source="none")
    assert ref.latency_s == 0.0 and ref.cost_usd is None and ref.group_index == -1


# --- step budget and per-step metrics with a stub client --------------------------------------------------------------
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
    with caplog.at_level("WARNING", logger="trl_sgcd.credit.reference"):
        SiblingReferenceBuilder("litellm", llm_client=client).build([sample_group()])
    (message,) = [r.message for r in caplog.records]
    assert "http://llm.internal:8000/v1" in message and "AuthenticationError: 401" in message
    assert "credit_reference_api_key_env" in message and "1 of 1 group(s) failed" in message


# --- a real corpus: the reference stays useful after sanitizing tau2-bench data ----------------------------------------
def test_tau2_observations_keep_ids_tools_and_errors_readable():
    from pathlib import Path

    tau2 = json.loads((Path(__file__).parent / "data" / "tau2_excerpt.json").read_text())
    user, reservation = tau2["airline_users"][0], tau2["airline_reservations"][0]
    flight = reservation["flights"][0]["flight_number"]
    error = f"Error: flight {flight} is not available on date 2024-05-30"

    def rollout(ok):
        turns = [
            {"role": "assistant", "content": "", "tool_calls": [_call("get_user_details", user_id=user["user_id"])]},
            {"role": "tool", "name": "get_user_details", "content": json.dumps(user)},
            {"role": "assistant", "content": "", "tool_calls": [_call("get_reservation_details", reservation_id="R")]},
            {"role": "tool", "name": "get_reservation_details", "content": str(reservation)},
        ]
        if not ok:
            turns += [
                {"role": "assistant", "content": "", "tool_calls": [_call("update_reservation_flights", flights=[])]},
                {"role": "tool", "name": "update_reservation_flights", "content": error},
            ]
        return turns + [{"role": "assistant", "content": "Done." if ok else "Sorry."}]

    prompt = f"Change reservation {reservation['reservation_id']}; my DOB is {user['dob']}."
    group = SiblingGroup(
        0, [Rollout(0, prompt, rollout(True), 1.0), Rollout(1, prompt, rollout(False), 0.0)], [True, False]
    )
    evidence = build_evidence(group, sanitizer=Sanitizer(), max_input_tokens=12000, max_observation_chars=4000)
    shown = evidence.task + "\n".join(evidence.traces)
    for private in [
        user["dob"],
        user["email"],
        user["address"]["address1"],
        reservation["passengers"][0]["dob"],
        "credit_card_4421486",
    ]:
        assert private not in shown
    for readable in [reservation["reservation_id"], flight, user["user_id"], error]:
        assert readable in shown, readable
    ref = SiblingReferenceBuilder().build([group])[0]
    assert error in ref.sections["Failed branches and why"]
    assert "update_reservation_flights" in ref.sections["Deviation points"]
    assert "get_reservation_details(reservation_id)" in ref.sections["Successful action branches"]
