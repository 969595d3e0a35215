"""User mode "simulator": τ²'s user simulator prompt, answered by any OpenAI-compatible LLM through litellm.

TRL's tool loop (1.16) only ever appends tool results to a conversation: it ends the rollout as soon as an assistant
turn has no tool call and has no place for a user turn. So inside TRL's loop the simulated user is reached through a
tool: the environment gets one more public method, `send_message_to_user(message)`, whose observation is the user's
reply. The episode goes on for as many exchanges as the model makes (up to `max_tool_calling_iterations`) and ends
when the simulated user ends it (τ²'s `###STOP###`, `###TRANSFER###`, `###OUT-OF-SCOPE###`): later calls return an
error and change nothing. The conversation opens as in τ²: the agent's greeting "Hi! How can I help you today?",
the simulator's first message is what `reset` returns, and TRL appends it to the (empty) user message of the prompt.
Rendering user turns as real `user` messages instead would need a `rollout_func` (TRL's other generation hook).

The simulator sees τ²'s own system prompt (`tau2.user.user_simulator`: the simulation guidelines and the task's full
scenario, hidden instructions included, as in τ²); the agent never sees it. Calls go through
[`~trl_sgcd.credit.reference.llm.LiteLLMClient`] with the same deadline, retries and cache as the credit references, configured
by environment variables (a recipe's `env:` block):

- `TRL_SGCD_TAU2_USER_MODEL` (required), `TRL_SGCD_TAU2_USER_API_BASE`, `TRL_SGCD_TAU2_USER_API_KEY_ENV`
  (name of the variable holding the key), `TRL_SGCD_TAU2_USER_DEADLINE` (seconds, default 60),
  `TRL_SGCD_TAU2_USER_CACHE_DIR`.

Fallback, as for references, never stops training: if the first user turn fails the rollout falls back to the
single-instruction message; if a later turn fails, the user ends the conversation (counted in `user_errors`).
"""

from __future__ import annotations

import hashlib
import json
import os

from .dataset import first_user_message
from .env import Tau2Env, make_env_class

GREETING = "Hi! How can I help you today?"
STOP_TOKENS = ("###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###")
ENDED_ERROR = "Error: the customer has ended the conversation; nothing was sent."
ENV_PREFIX = "TRL_SGCD_TAU2_USER_"
_CLIENTS: dict[tuple, object] = {}


def user_client():
    """The [`LiteLLMClient`] of the user simulator, from the `TRL_SGCD_TAU2_USER_*` variables (one per setting)."""
    model = os.environ.get(ENV_PREFIX + "MODEL")
    if not model:
        raise ValueError(f"The τ² user simulator needs {ENV_PREFIX}MODEL (a litellm model name) to be set.")
    key_env = os.environ.get(ENV_PREFIX + "API_KEY_ENV")
    settings = (
        model,
        os.environ.get(ENV_PREFIX + "API_BASE"),
        os.environ.get(key_env) if key_env else None,
        float(os.environ.get(ENV_PREFIX + "DEADLINE", "60")),
        os.environ.get(ENV_PREFIX + "CACHE_DIR"),
    )
    if settings not in _CLIENTS:
        from trl_sgcd.credit.reference.llm import LiteLLMClient

        model, api_base, api_key, deadline, cache_dir = settings
        _CLIENTS[settings] = LiteLLMClient(
            model, api_base=api_base, api_key=api_key, deadline=deadline, cache_dir=cache_dir, max_tokens=512
        )
    return _CLIENTS[settings]


def simulator_system_prompt(task) -> str:
    """τ²'s user-simulator system prompt for a task (guidelines + the full scenario)."""
    from tau2.user.user_simulator import UserSimulator

    return UserSimulator(instructions=str(task.user_scenario)).system_prompt


class Tau2UserSimEnv(Tau2Env):
    """
    A τ² environment whose user is simulated by an LLM (see the module docstring). Extra attributes:
    `user_stopped` (`bool`), `user_errors` (`int`) and `user_turns` (`int`).
    """

    def _clear(self) -> None:
        super()._clear()
        self.user_errors = 0
        self.user_turns = 0
        self._simulator_messages: list[dict] = []

    def reset(self, task_id: str | None = None, **kwargs) -> str:
        """Start the task and return the simulated user's first message (TRL appends it to the user message)."""
        super().reset(task_id=task_id, **kwargs)
        self._simulator_messages = [{"role": "system", "content": simulator_system_prompt(self.task)}]
        reply = self._user_turn(GREETING)
        if reply is None:
            self._simulator_messages = self._simulator_messages[:1]
            return first_user_message(self.task)
        return reply

    def _user_turn(self, agent_message: str) -> str | None:
        """Send the agent's message to the simulator; its reply, or `None` when the LLM call failed."""
        from tau2.data_model.message import AssistantMessage, UserMessage

        messages = self._simulator_messages + [{"role": "user", "content": agent_message}]
        key = hashlib.sha256(json.dumps(["tau2-user", self.domain_name, messages]).encode()).hexdigest()
        result = user_client().complete_many([(key, messages)])[0]
        if result.error is not None or result.text is None:
            self.user_errors += 1
            return None
        reply = result.text.strip()
        self._simulator_messages = messages + [{"role": "assistant", "content": reply}]
        self.user_turns += 1
        if self.user_turns > 1:  # the first reply is the prompt's user message, which the evaluation already has
            self.trajectory.append(AssistantMessage(role="assistant", content=agent_message))
            self.trajectory.append(UserMessage(role="user", content=reply))
        if any(token in reply for token in STOP_TOKENS):
            self.user_stopped = True
        return reply

    def send_message_to_user(self, message: str) -> str:
        """Send a message to the customer and return the customer's reply.

        Args:
            message: The message to the customer.
        """
        self.tool_calls += 1
        if self.transferred:  # τ²'s simulated user ends the conversation at the first message after a transfer
            self.user_stopped = True
        if self.user_stopped:
            self.tool_failures += 1
            return ENDED_ERROR
        reply = self._user_turn(message)
        if reply is None:  # a failed turn ends the conversation; the episode is scored as it stands
            self.user_stopped = True
            return "###STOP###"
        return reply


def __getattr__(name: str):
    """`Tau2AirlineUserSimEnv` / `Tau2RetailUserSimEnv`, built on first access."""
    for domain_name in ("airline", "retail"):
        class_name = f"Tau2{domain_name.capitalize()}UserSimEnv"
        if name == class_name:
            return make_env_class(domain_name, base=Tau2UserSimEnv, class_name=class_name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
