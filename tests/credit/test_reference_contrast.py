"""The contrast reference backend (no LLM): deterministic, quotes each failed sibling's first deviating step beside the
success's (sanitized: private values masked, the failure's own values kept), capped, and still useful on sanitized
tau2-bench data."""

import json

from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder, cap_reference
from trl_sgcd.credit.reference.evidence import build_evidence
from trl_sgcd.credit.reference.llm import ANSWER_BYTES_PER_TOKEN
from trl_sgcd.credit.reference.prompt import SECTION_TITLES, parse_reference_sections
from trl_sgcd.credit.reference.sanitize import Sanitizer
from trl_sgcd.credit.types import Rollout, SiblingGroup
from trl_sgcd.testing.samples import PLANTED, sample_group


def _call(name, **args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


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
    assert (
        '- Sibling 2: step 2: called cancel_reservation({"reservation_id": "R1"}) where sibling 1 (success) called '
        'get_reservation_details({"reservation_id": "R1"}). Then the final answer.'
    ) in deviation
    assert (
        'get_user_details({"user_id": "u"}) -> get_reservation_details({"reservation_id": "R1"})'
        in ref.sections["Successful action branches"]
    )
    assert "details not checked" in ref.sections["Failed branches and why"]
    assert "get_reservation_details(reservation_id)" in ref.sections["State checks"]


def _change_group(bad_flight, *, bad_answer="Done.", good_answer="Done."):
    prompt = "Change reservation R1 to flight HAT045, pay with card_7."

    def rollout(flight, answer):
        return [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("get_reservation_details", reservation_id="R1")],
            },
            {"role": "tool", "name": "get_reservation_details", "content": "{'status': 'active'}"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("update_reservation_flights", reservation_id="R1", flight_numbers=[flight])],
            },
            {"role": "tool", "name": "update_reservation_flights", "content": "{'status': 'updated'}"},
            {"role": "assistant", "content": answer},
        ]

    gold = {"gold_actions": [{"name": "update_reservation_flights", "arguments": {"flight_numbers": ["HAT045"]}}]}
    rollouts = [
        Rollout(0, prompt, rollout("HAT045", good_answer), 1.0, gold),
        Rollout(1, prompt, rollout(bad_flight, bad_answer), 0.0, gold),
    ]
    return SiblingGroup(0, rollouts, [True, False])


def test_contrast_quotes_the_failed_call_with_its_own_wrong_value_and_masks_the_gold_one():
    builder = SiblingReferenceBuilder(private_columns=["gold_actions"])
    ref = builder.build([_change_group("HAT071")])[0]
    deviation = ref.sections["Deviation points"]
    assert deviation.startswith('- Sibling 2: step 2: called update_reservation_flights({"flight_numbers": ["HAT071"]')
    assert '`flight_numbers` was ["HAT071"] where the success used ["[PRIVATE]"]' in deviation
    assert "HAT045" not in ref.text and "HAT071" in ref.text  # the gold value is private, the failure's own is not


def test_contrast_quotes_both_answers_when_the_calls_agree():
    group = _change_group("HAT045", bad_answer="You are on flight HAT999 now.", good_answer="All changed.")
    deviation = SiblingReferenceBuilder().build([group])[0].sections["Deviation points"]
    assert (
        'step 3 (final answer): answered "You are on flight HAT999 now." where sibling 1 (success) answered "All changed."'
        in deviation
    )


def test_contrast_quotes_values_sanitized_and_no_planted_literals():
    builder = SiblingReferenceBuilder(private_columns=["gold_answer", "gold_actions"])
    ref = builder.build([sample_group()])[0]
    for value in [*PLANTED.values(), "ZFA04Y"]:  # secrets, and the gold reservation id (a private column)
        assert value not in ref.text
    assert 'cancel_reservation({"reservation_id": "[PRIVATE]"})' in ref.text
    assert '"user_id": "mia_li_3668"' in ref.text  # ids stay readable (this one is in the clean prompt too)
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
    assert "get_reservation_details({" in ref.sections["Successful action branches"]
