"""The reference for the agreement tests: a scripted rollout played through τ²'s own `Orchestrator` (its turn loop,
error counting and termination, `max_errors` left at its default) and scored by τ²'s `evaluate_simulation`.

The agent replays the turns of a TRL completion (each assistant message: its tool calls, or its text); the user
opens with the prompt's user message and ends the conversation (`###STOP###`) at the agent's first text after it.
"""

from __future__ import annotations


def completion_turns(completion: list[dict]) -> list[list[tuple[str, dict]] | str]:
    """The assistant turns of a TRL completion: a list of `(name, arguments)` calls, or the turn's text."""
    turns = []
    for message in completion:
        if message.get("role") != "assistant":
            continue
        calls = [(c["function"]["name"], dict(c["function"]["arguments"])) for c in message.get("tool_calls") or []]
        turns.append(calls or message.get("content") or "")
    return turns


def _scripted_agent(turns):
    from tau2.agent.base import LocalAgent
    from tau2.data_model.message import AssistantMessage, ToolCall

    class ScriptedAgent(LocalAgent):
        def __init__(self):
            super().__init__(tools=[], domain_policy="")
            self.turns = list(turns)

        def get_init_state(self, message_history=None):
            return {"turn": 0}

        def generate_next_message(self, message, state):
            turn = self.turns[state["turn"]] if state["turn"] < len(self.turns) else "Goodbye."
            state = {"turn": state["turn"] + 1}
            if isinstance(turn, str):
                return AssistantMessage(role="assistant", content=turn), state
            calls = [
                ToolCall(id=f"c{state['turn']}_{i}", name=name, arguments=arguments, requestor="assistant")
                for i, (name, arguments) in enumerate(turn)
            ]
            return AssistantMessage(role="assistant", content=None, tool_calls=calls), state

    return ScriptedAgent()


def _scripted_user(first_message: str):
    from tau2.data_model.message import UserMessage
    from tau2.user.base import BaseUser, UserState
    from tau2.user.user_simulator import UserSimulator

    class ScriptedUser(BaseUser):
        def get_init_state(self, message_history=None):
            return UserState(system_messages=[], messages=[])

        def generate_next_message(self, message, state):
            content = "###STOP###" if state.messages else first_message
            state = UserState(system_messages=[], messages=[*state.messages, message])
            return UserMessage(role="user", content=content), state

        @classmethod
        def is_stop(cls, message):
            return UserSimulator.is_stop(message)

    return ScriptedUser()


def tau2_orchestrated(domain, task_id: str, completion: list[dict], first_message: str = "Hi, I need help."):
    """τ²'s `(termination_reason, reward)` of the scripted rollout `completion` on `domain`'s task `task_id`."""
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation
    from tau2.orchestrator.orchestrator import Orchestrator

    task = domain.task(task_id)
    orchestrator = Orchestrator(
        domain=domain.name,
        agent=_scripted_agent(completion_turns(completion)),
        user=_scripted_user(first_message),
        environment=domain.environment(),
        task=task,
    )
    run = orchestrator.run()
    info = evaluate_simulation(run, task, EvaluationType.ALL, solo_mode=False, domain=domain.name)
    return run.termination_reason, info.reward
