"""The reward of a τ² rollout is τ²'s own evaluation: `tau2.evaluator.evaluator.evaluate_simulation`, unchanged.

The rollout is handed to τ² as a `SimulationRun`: the first user message, then the (tool call, observation) pairs the
environment executed, in order (and, with the user simulator, the agent/user exchanges), then the assistant's text
messages. τ² then replays the tool calls on a fresh database, replays the gold actions on another, compares the two
database hashes (`DB`), checks that every `communicate_info` string appears in an assistant message (`COMMUNICATE`),
and multiplies the parts named in the task's `reward_basis` (τ²'s default: `DB` and `COMMUNICATE`).

What the order means: the database replay uses only the tool calls (kept in execution order) and the communicate check
looks at every assistant text, so placing the texts after the calls changes no check.

Termination follows τ²'s `Orchestrator` (see `termination_reason`): a rollout whose failed tool calls reached τ²'s
threshold (`max_errors`, read from τ²'s orchestrator) is `TOO_MANY_ERRORS` and scores 0, whatever came after; a
rollout whose last assistant turn still asks for a tool (cut by `max_tool_calling_iterations` or the completion
budget) is `MAX_STEPS` and scores 0, as τ² scores a simulation that hits its step limit, unless that turn made the
transfer to a human agent (the episode ends there) or the simulated user stopped: `USER_STOP`; otherwise `AGENT_STOP`.

LLM-judged checks: τ² tasks also carry `nl_assertions`, but they are in no airline or retail task's `reward_basis`
(τ² marks them work in progress and `EvaluationType.ALL` skips them), so no judge runs; [`skipped_judge_checks`]
counts the tasks that carry them.
"""

from __future__ import annotations

import math
from typing import Any

from .domain import TRANSFER_TOOL, load_domain


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def assistant_texts(completion) -> list[str]:
    """Non-empty text contents of the assistant messages of a TRL completion (or the completion string itself)."""
    if isinstance(completion, str):
        return [completion] if completion.strip() else []
    return [
        _text(m.get("content")) for m in completion if m.get("role") == "assistant" and _text(m.get("content")).strip()
    ]


def ended_by_agent(completion) -> bool:
    """Whether the last assistant turn of a completion asks for no tool (the agent ended its turn)."""
    if isinstance(completion, str):
        return True
    turns = [m for m in completion if m.get("role") == "assistant"]
    return not turns or not turns[-1].get("tool_calls")


def first_user_text(prompt) -> str:
    """The text of the last user message of a prompt (what the agent was asked)."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt or [] if m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


def simulation_messages(env, completion, prompt=None) -> list:
    """τ² messages of a rollout: first user message, the environment's record, then the assistant texts."""
    from tau2.data_model.message import AssistantMessage, ToolMessage, UserMessage

    messages = []
    first = first_user_text(prompt)
    if first:
        messages.append(UserMessage(role="user", content=first))
    for entry in env.trajectory:
        if isinstance(entry, tuple):  # (ToolCall, ToolMessage)
            call, observation = entry
            messages.append(AssistantMessage(role="assistant", content=None, tool_calls=[call]))
            messages.append(ToolMessage(**observation.model_dump()))
        else:  # a τ² message recorded by the user-simulator environment
            messages.append(entry)
    for text in assistant_texts(completion):
        messages.append(AssistantMessage(role="assistant", content=text))
    return messages


def last_turn_tools(completion) -> list[str]:
    """Names of the tools called by the last assistant turn of a completion (none for a string)."""
    if isinstance(completion, str):
        return []
    turns = [m for m in completion if m.get("role") == "assistant"]
    calls = (turns[-1].get("tool_calls") or []) if turns else []
    return [(c.get("function") or c).get("name") for c in calls]


def termination_reason(env, completion):
    """τ²'s `TerminationReason` of a rollout (see the module docstring)."""
    from tau2.data_model.simulation import TerminationReason

    if env.too_many_errors:
        return TerminationReason.TOO_MANY_ERRORS
    if env.user_stopped:
        return TerminationReason.USER_STOP
    if ended_by_agent(completion):
        return TerminationReason.USER_STOP if env.transferred else TerminationReason.AGENT_STOP
    if env.transferred and TRANSFER_TOOL in last_turn_tools(completion):
        return TerminationReason.USER_STOP  # the episode ended at the transfer (`env.done`)
    return TerminationReason.MAX_STEPS


def evaluate_episode(env, completion, prompt=None):
    """
    τ²'s `RewardInfo` of one rollout (`evaluate_simulation` with `EvaluationType.ALL`).

    Args:
        env ([`Tau2Env`]): The rollout's environment (after the episode).
        completion (`list[dict]` or `str`): The TRL completion.
        prompt (`list[dict]` or `str`, *optional*): The prompt (its last user message is the conversation's first).
    """
    from tau2.data_model.simulation import SimulationRun
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation

    simulation = SimulationRun(
        id=f"trl-sgcd-{env.domain_name}-{env.task.id}",
        task_id=env.task.id,
        start_time="",
        end_time="",
        duration=0.0,
        termination_reason=termination_reason(env, completion),
        messages=simulation_messages(env, completion, prompt),
    )
    return evaluate_simulation(simulation, env.task, EvaluationType.ALL, solo_mode=False, domain=env.domain_name)


def tau2_reward(completions: list, environments: list | None = None, prompts: list | None = None, **kwargs):
    """
    TRL reward function: τ²'s own evaluation of each rollout (1.0 or 0.0 on airline and retail).

    Args:
        completions (`list`): Completions as TRL passes them.
        environments (`list[Tau2Env]`): The environment of each rollout, as `GRPOTrainer` passes them.
        prompts (`list`, *optional*): The prompts (the first user message goes into the τ² trajectory).

    Returns:
        `list[float]`: One reward per completion; the `RewardInfo` is kept on each environment as `reward_info`.
    """
    if environments is None:
        raise ValueError("tau2_reward needs `environments`: train with `environment_factory=Tau2AirlineEnv`.")
    prompts = prompts if prompts is not None else [None] * len(completions)
    rewards = []
    for env, completion, prompt in zip(environments, completions, prompts, strict=True):
        if env.task is None:
            rewards.append(0.0)
            continue
        info = evaluate_episode(env, completion, prompt)
        env.reward_info = info
        reward = float(info.reward)
        rewards.append(0.0 if math.isnan(reward) else reward)
    return rewards


def skipped_judge_checks(domain_name: str, task_ids: list[str] | None = None) -> dict:
    """How many tasks carry LLM-judged `nl_assertions` and how many have them in their reward basis (judged)."""
    from tau2.data_model.tasks import RewardType

    domain = load_domain(domain_name)
    ids = task_ids if task_ids is not None else list(domain.tasks)
    carry = judged = 0
    for task_id in ids:
        criteria = domain.task(task_id).evaluation_criteria
        if criteria is not None and criteria.nl_assertions:
            carry += 1
            judged += int(RewardType.NL_ASSERTION in criteria.reward_basis)
    return {"tasks": len(ids), "with_nl_assertions": carry, "nl_assertions_in_reward_basis": judged}
