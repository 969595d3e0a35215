"""`Tau2AirlineEnv` / `Tau2RetailEnv`: τ²-bench domains as TRL `environment_factory` classes.

```python
from trl_sgcd.envs.tau2 import Tau2AirlineEnv, make_tau2_dataset, tau2_reward

trainer = SGCDTrainer(model=..., args=..., train_dataset=make_tau2_dataset("airline", "train"),
                      environment_factory=Tau2AirlineEnv, reward_funcs=tau2_reward)
```

Each public method is one of the domain's τ² tools, with τ²'s explicit JSON schema attached (`__json_schema__`, see
`schemas.py`; the docstring and plain type hints are a fallback). A call runs τ²'s own implementation through
`Environment.get_response` on this episode's database, so the observation (result JSON, or `"Error: ..."`) is exactly
what a τ² agent would see, and the (call, observation) pair is recorded for the evaluation. `reset(task_id=...)` starts
a task on a fresh copy of the database; the copy is loaded lazily, on the first tool call (about 0.7 s for airline), so
a rollout that calls no tool costs nothing.

Ending the episode, as τ²'s `Orchestrator` ends a conversation: `done` becomes true after a successful
`transfer_to_human_agents`, once τ²'s too-many-errors threshold of failed tool calls is reached (`max_errors`, read
from τ²'s orchestrator), or when the simulated user ends the conversation (`user.py`). `SGCDTrainer` then ends that
rollout's tool loop: no further assistant turn is generated (`trl_sgcd.envs.episode`; plain TRL 1.16 would go on
generating). Calls that are made anyway (the rest of the same turn, or later turns under a plain `GRPOTrainer`) run as
τ² runs them: a call after a transfer is executed (τ²'s orchestrator executes every agent tool call until the user
ends the conversation), and the reward of a rollout that reached the error threshold is 0 whatever follows
(`TOO_MANY_ERRORS`, see `reward.py`). Only after the simulated user has stopped does a call execute nothing, since
τ² never reaches it.
"""

from __future__ import annotations

import inspect
from typing import Any

from .domain import TRANSFER_TOOL, load_domain, max_errors, require_tau2
from .schemas import SCHEMA_ATTRIBUTE, fallback_annotation, google_docstring, install_schema_hook

ENDED_ERROR = "Error: the customer has ended the conversation; nothing was done."


class Tau2Env:
    """
    Base class of the τ² environments (one subclass per domain, built by [`make_env_class`]).

    Attributes:
        task (τ² `Task` or `None`): The current task.
        trajectory (`list[tuple]`): The τ² `(ToolCall, ToolMessage)` pairs executed in this episode, in order.
        transferred (`bool`): Whether a `transfer_to_human_agents` call succeeded.
        user_stopped (`bool`): Whether the simulated user ended the conversation (never, with the single-message user).
        errors (`int`): Failed tool calls as τ²'s orchestrator counts them (calls the environment answered with an error).
        too_many_errors (`bool`): Whether `errors` reached τ²'s threshold ([`max_errors`]).
        done (`bool`): Whether the episode is over (transferred, too many errors, or the user stopped): `SGCDTrainer`
            generates no further turn for it (`trl_sgcd.envs.episode`).
        tool_calls (`int`), tool_failures (`int`), calls (`list[dict]`): Tool-use record of the episode (failures include
            calls refused after the user stopped).
    """

    domain_name: str = ""

    def __init__(self):
        require_tau2()
        install_schema_hook()
        self.domain = load_domain(self.domain_name)
        self.task = None
        self._environment = None
        self._clear()

    def _clear(self) -> None:
        self._environment = None
        self.trajectory: list[tuple] = []
        self.transferred = False
        self.user_stopped = False
        self.errors = 0
        self.tool_calls = 0
        self.tool_failures = 0
        self.calls: list[dict] = []

    def reset(self, task_id: str | None = None, **kwargs) -> str | None:
        """Start the τ² task `task_id` (a dataset column) on a fresh database. Other columns are ignored."""
        if task_id is None:
            raise ValueError(f"{type(self).__name__}.reset needs a `task_id` (a column of `make_tau2_dataset`).")
        self.task = self.domain.task(task_id)
        self._clear()
        return None

    @property
    def too_many_errors(self) -> bool:
        """Whether τ²'s orchestrator would have ended the conversation as `TOO_MANY_ERRORS`."""
        return self.errors >= max_errors()

    @property
    def done(self) -> bool:
        """Whether the episode is over: a transfer to a human agent, too many errors, or the simulated user ended it."""
        return self.transferred or self.user_stopped or self.too_many_errors

    @property
    def environment(self):
        """This episode's τ² `Environment` (fresh database plus the task's initial state), built on first use."""
        if self._environment is None:
            if self.task is None:
                raise RuntimeError("the environment has not been reset")
            self._environment = initial_environment(self.domain, self.task)
        return self._environment

    def _call(self, name: str, arguments: dict[str, Any]) -> str:
        from tau2.data_model.message import ToolCall

        self.tool_calls += 1
        if self.user_stopped:  # τ² never executes a call after the user's stop
            self.tool_failures += 1
            self.calls.append({"name": name, "arguments": arguments, "error": ENDED_ERROR})
            return ENDED_ERROR
        call = ToolCall(id=f"call_{len(self.trajectory)}", name=name, arguments=dict(arguments), requestor="assistant")
        message = self.environment.get_response(call)  # τ²'s own execution; exceptions become "Error: ..."
        self.trajectory.append((call, message))
        self.tool_failures += int(message.error)
        self.errors += int(message.error)  # what τ²'s orchestrator counts towards max_errors
        self.calls.append({"name": name, "arguments": arguments, "error": message.content if message.error else None})
        if name == TRANSFER_TOOL and not message.error:
            self.transferred = True
        return message.content


def initial_environment(domain, task):
    """A τ² environment on a fresh database, with the task's initialization data and actions applied (as τ² does)."""
    environment = domain.environment()
    state = task.initial_state
    if state is not None:
        environment.set_state(
            initialization_data=state.initialization_data,
            initialization_actions=state.initialization_actions,
            message_history=state.message_history or [],
        )
    return environment


def _tool_method(name: str, schema: dict):
    """A method `name(self, **arguments)` that runs the τ² tool, with τ²'s schema and a docstring/signature fallback."""
    function_schema = schema["function"]
    properties = function_schema.get("parameters", {}).get("properties", {})
    required = set(function_schema.get("parameters", {}).get("required", []))

    def tool(self, **arguments):
        return self._call(name, arguments)

    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations = {}
    for arg, prop in properties.items():
        annotations[arg] = fallback_annotation(prop)
        default = inspect.Parameter.empty if arg in required else None
        parameters.append(
            inspect.Parameter(arg, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotations[arg])
        )
    tool.__name__ = name
    tool.__doc__ = google_docstring(function_schema)
    tool.__signature__ = inspect.Signature(parameters)
    tool.__annotations__ = annotations
    setattr(tool, SCHEMA_ATTRIBUTE, schema)
    return tool


_CLASSES: dict[str, type] = {}
CLASS_NAMES = {"airline": "Tau2AirlineEnv", "retail": "Tau2RetailEnv"}


def make_env_class(domain_name: str, base: type = Tau2Env, class_name: str | None = None) -> type:
    """
    The `environment_factory` class of a τ² domain: `base` plus one public method per τ² tool (cached).

    Args:
        domain_name (`str`): `"airline"` or `"retail"`.
        base (`type`, *optional*, defaults to [`Tau2Env`]): Base class (e.g. the user-simulator environment).
        class_name (`str`, *optional*): Name of the class (default `Tau2AirlineEnv` / `Tau2RetailEnv`).
    """
    class_name = class_name or CLASS_NAMES[domain_name]
    if class_name not in _CLASSES:
        domain = load_domain(domain_name)
        methods = {name: _tool_method(name, domain.tool_schemas[name]) for name in domain.tool_names}
        for name, method in methods.items():
            method.__qualname__ = f"{class_name}.{name}"
        attributes = {"domain_name": domain_name, "__module__": base.__module__, **methods}
        attributes["__doc__"] = f"τ²-bench {domain_name} environment (tools: {', '.join(domain.tool_names)})."
        _CLASSES[class_name] = type(class_name, (base,), attributes)
    return _CLASSES[class_name]


def tool_names(env_class: type) -> list[str]:
    """The tool methods of an environment class, selected the way TRL selects them."""
    members = inspect.getmembers(env_class, predicate=inspect.isfunction)
    return [n for n, _ in members if n not in ("reset", "get_reward") and not n.startswith("_")]


def __getattr__(name: str):
    """`Tau2AirlineEnv` / `Tau2RetailEnv` are built on first access (τ² is imported only then)."""
    for domain_name, class_name in CLASS_NAMES.items():
        if name == class_name:
            return make_env_class(domain_name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
