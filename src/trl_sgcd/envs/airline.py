"""`AirlineEnv`: the mini airline customer-service environment, usable as a TRL `environment_factory`.

```python
from trl import GRPOTrainer
from trl_sgcd.envs import AirlineEnv, airline_reward, make_airline_dataset

trainer = GRPOTrainer(model=..., args=..., train_dataset=make_airline_dataset("train"),
                      environment_factory=AirlineEnv, reward_funcs=airline_reward)
```

TRL turns every public method of the environment into a tool (schema from the type hints and the Google-style
docstring), calls `reset(**row)` with the dataset row before each rollout, and passes the environment instances to
reward functions as `environments`. Tools never raise: unknown ids, wrong types, missing arguments and policy
violations come back as an error observation `{"error": "..."}` and are counted on the instance (`tool_calls`,
`tool_failures`, `calls`), which the audit reads.

The environment deliberately has no `get_reward` method: success on information tasks needs the final assistant answer,
which only a reward function sees, and TRL would sum a `get_reward` column with `airline_reward` (double counting). Use
`airline_reward` (or `score_episode` on one environment).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import typing
from functools import lru_cache

from . import airline_ops as ops
from .airline_db import build_database
from .airline_ops import ToolError
from .airline_tasks import AIRLINE_POLICY, COMPACT_POLICY, airline_tasks, check_profile, get_task

AIRLINE_PRIVATE_COLUMNS = ["gold_actions", "gold_answer"]
"""Dataset columns that hold private supervision; the evidence sanitizer must never show them to an external LLM."""


def _error(message: str) -> str:
    return json.dumps({"error": message})


def _check_types(name: str, arguments: dict, hints: dict) -> dict:
    """Validate (and lightly normalise) call arguments against the annotations; raise `ToolError` on a mismatch."""
    checked = {}
    for key, value in arguments.items():
        hint = hints.get(key)
        if hint is str and not isinstance(value, str):
            raise ToolError(f"{name}: argument '{key}' must be a string, got {type(value).__name__}")
        if hint is bool and not isinstance(value, bool):
            raise ToolError(f"{name}: argument '{key}' must be true or false, got {type(value).__name__}")
        if typing.get_origin(hint) is list:
            value = [value] if isinstance(value, str) else value  # a lone flight number is a one-element list
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ToolError(f"{name}: argument '{key}' must be a list of strings")
        checked[key] = value
    return checked


def _tool(fn):
    """Make an `AirlineEnv` method a safe tool: bind and type-check the arguments, count the call, and return a JSON
    observation string (or an error observation) instead of raising. Signature and docstring are kept for the schema."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        self.tool_calls += 1
        try:
            if self.db is None:
                raise ToolError("the environment has not been reset")
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as e:
                raise ToolError(f"{fn.__name__}: {e}") from None
            arguments = _check_types(fn.__name__, dict(list(bound.arguments.items())[1:]), hints)
            observation = json.dumps(fn(self, **arguments))
        except Exception as e:  # noqa: BLE001 - a tool never raises: any failure is an observation for the model
            self.tool_failures += 1
            self.calls.append({"name": fn.__name__, "arguments": kwargs, "error": str(e)})
            return _error(str(e))[: self.observation_max_chars]
        self.calls.append({"name": fn.__name__, "arguments": kwargs, "error": None})
        return observation[: self.observation_max_chars]  # [:None] keeps it whole

    return wrapper


class AirlineBase:
    """State and `reset` shared by the airline environments (`AirlineEnv`, `CompactAirlineEnv`); no tools of its own.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Default seed of the database and task set, used when the dataset row has no `seed` column.
        observation_max_chars (`int` or `None`, *optional*, defaults to `None`):
            Cut every tool observation the policy sees to this many characters; `None` keeps them whole. The paper's
            harness (Table 4) uses 512: `environment_factory=functools.partial(AirlineEnv, observation_max_chars=512)`
            or the import path `trl_sgcd.envs.airline:PaperAirlineEnv`.

    Attributes:
        task (`dict` or `None`): The current task (see `airline_tasks`).
        db (`dict` or `None`): The current database, a fresh copy at every `reset`.
        transferred (`bool`): Whether `transfer_to_human_agents` was called.
        tool_calls (`int`), tool_failures (`int`), calls (`list[dict]`): Tool-use record of the episode.
    """

    def __init__(self, seed: int = 0, observation_max_chars: int | None = None):
        self.seed = seed
        self.observation_max_chars = observation_max_chars
        self.task = None
        self.db = None
        self._clear()

    def _clear(self) -> None:
        self.transferred = False
        self.tool_calls = 0
        self.tool_failures = 0
        self.calls = []

    def reset(self, task_id: str | None = None, seed: int | None = None, **kwargs) -> None:
        """Start the task `task_id` on a fresh copy of the database. Other dataset columns are ignored."""
        if task_id is None:
            raise ValueError("AirlineEnv.reset needs a `task_id` (a column of `make_airline_dataset`).")
        self.seed = self.seed if seed is None else int(seed)
        self.task = get_task(task_id, seed=self.seed)
        self.db = build_database(self.seed)
        self._clear()
        return None


class AirlineEnv(AirlineBase):
    """Mini airline customer-service environment (one task per `reset`), with the 7 tools of the full profile.

    See `AirlineBase` for the arguments and attributes; `CompactAirlineEnv` (`trl_sgcd.envs.airline_compact`) is the
    3-tool profile for experiments on CPU.
    """

    @_tool
    def get_user_details(self, user_id: str):
        """Get a user's profile, payment methods and reservation ids.

        Args:
            user_id: User id.
        """
        return ops.get_user(self.db, user_id)

    @_tool
    def get_reservation_details(self, reservation_id: str):
        """Get a reservation.

        Args:
            reservation_id: Reservation id.
        """
        return ops.get_reservation(self.db, reservation_id)

    @_tool
    def search_direct_flight(self, origin: str, destination: str, date: str):
        """Search direct flights, with status, seats and prices.

        Args:
            origin: Airport code.
            destination: Airport code.
            date: YYYY-MM-DD.
        """
        return ops.search_direct(self.db, origin, destination, date)

    @_tool
    def book_reservation(
        self, user_id: str, flight_numbers: list[str], cabin: str, payment_id: str, insurance: bool = False
    ):
        """Book flights for the user.

        Args:
            user_id: User id.
            flight_numbers: Flight numbers.
            cabin: Cabin. (choices: ["basic_economy", "economy", "business"])
            payment_id: Payment method id.
            insurance: Add insurance.
        """
        return ops.book(self.db, user_id, flight_numbers, cabin, payment_id, insurance)

    @_tool
    def cancel_reservation(self, reservation_id: str):
        """Cancel a reservation.

        Args:
            reservation_id: Reservation id.
        """
        return ops.cancel(self.db, reservation_id)

    @_tool
    def update_reservation_flights(self, reservation_id: str, flight_numbers: list[str], payment_id: str):
        """Change the flights of a reservation.

        Args:
            reservation_id: Reservation id.
            flight_numbers: New flight numbers.
            payment_id: Payment method id for the fare difference.
        """
        return ops.change_flights(self.db, reservation_id, flight_numbers, payment_id)

    @_tool
    def transfer_to_human_agents(self, summary: str):
        """Transfer the user to a human agent.

        Args:
            summary: Summary of the request.
        """
        self.transferred = True
        return "Transfer successful"


PaperAirlineEnv = functools.partial(AirlineEnv, observation_max_chars=512)
"""`AirlineEnv` with the paper's 512-character policy-side observation limit (Table 4), as an `environment_factory`."""


def airline_environment(profile: str = "full") -> type:
    """The environment class of a task profile: `AirlineEnv` (`"full"`) or `CompactAirlineEnv` (`"compact"`)."""
    check_profile(profile)
    if profile == "compact":
        from .airline_compact import CompactAirlineEnv

        return CompactAirlineEnv
    return AirlineEnv


def airline_tool_schemas(profile: str = "full") -> list[dict]:
    """JSON schemas of the tools of a profile's environment, as `apply_chat_template(tools=...)` and SFT `tools`
    columns take them."""
    from transformers.utils import get_json_schema

    env_class = airline_environment(profile)
    env = env_class()
    return [get_json_schema(getattr(env, name)) for name in tool_names(env_class)]


def tool_names(env_class: type | None = None) -> list[str]:
    """Names of the tool methods of `env_class` (default `AirlineEnv`), selected the way TRL selects them (public
    functions, minus `reset`/`get_reward`)."""
    members = inspect.getmembers(env_class or AirlineEnv, predicate=inspect.isfunction)
    return [name for name, _ in members if name not in ("reset", "get_reward") and not name.startswith("_")]


# --- reward -----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _gold_outcome(seed: int, task_id: str) -> tuple[dict, bool]:
    """Database and transfer flag after replaying the task's gold actions on a fresh environment (cached, read-only)."""
    env = AirlineEnv(seed)
    env.reset(task_id=task_id, seed=seed)
    for action in env.task["gold_actions"]:
        observation = getattr(env, action["name"])(**action["arguments"])
        if env.calls[-1]["error"] is not None:
            raise RuntimeError(f"gold action {action} of {task_id} failed: {observation}")
    return env.db, env.transferred


def final_answer(completion) -> str:
    """The final answer of a completion: the content of its last assistant message (or the string itself)."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content") or ""
            return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    return ""


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace("$", " ").replace(",", ""))


def contains_fact(answer: str, fact: str) -> bool:
    """Whether `fact` occurs in `answer` as a whole token (case-insensitive; `$` and thousands commas ignored)."""
    pattern = rf"(?<![\w]){re.escape(_normalise(fact).strip())}(?![\w])"
    return re.search(pattern, _normalise(answer)) is not None


def score_episode(env: AirlineEnv, answer: str) -> float:
    """1.0 if the final database (and transfer flag) equals the gold one and, for information tasks, the answer
    contains every required fact; else 0.0."""
    if env.task is None or env.db is None:
        return 0.0
    gold_db, gold_transferred = _gold_outcome(env.seed, env.task["task_id"])
    if env.db != gold_db or env.transferred != gold_transferred:
        return 0.0
    return float(all(contains_fact(answer, fact) for fact in env.task["answer_facts"]))


def airline_reward(completions: list, environments: list | None = None, **kwargs) -> list[float]:
    """TRL reward function: the verified task success of each rollout (see `score_episode`).

    Args:
        completions (`list`):
            Completions as TRL passes them (message lists for conversational prompts, or strings).
        environments (`list[AirlineEnv]`):
            The environment instance of each rollout, as `GRPOTrainer` passes them.

    Returns:
        `list[float]`: 1.0 for a success and 0.0 otherwise, one per completion.
    """
    if environments is None:
        raise ValueError("airline_reward needs `environments`: train with `environment_factory=AirlineEnv`.")
    return [score_episode(env, final_answer(c)) for env, c in zip(environments, completions, strict=True)]


# --- dataset ----------------------------------------------------------------------------------------------------


def airline_prompt(task: dict) -> list[dict]:
    """The clean deployment prompt of a task: the policy of its profile as system message, the request as user
    message."""
    policy = COMPACT_POLICY if task.get("profile") == "compact" else AIRLINE_POLICY
    return [{"role": "system", "content": policy}, {"role": "user", "content": task["instruction"]}]


def make_airline_dataset(split: str = "train", *, seed: int = 0, n: int | None = None, profile: str = "full"):
    """The airline tasks of a split as a `datasets.Dataset` for `GRPOTrainer` (with `environment_factory=AirlineEnv`).

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            `"train"` or `"test"` (held out: disjoint users and reservations).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the database and tasks.
        n (`int`, *optional*):
            Keep only the first `n` tasks (the order is shuffled, so categories stay mixed).
        profile (`str`, *optional*, defaults to `"full"`):
            `"full"` or `"compact"` (train with `environment_factory=airline_environment(profile)`; see
            `trl_sgcd.envs.airline_compact`).

    Returns:
        `datasets.Dataset`: Columns `prompt` (system + user messages), `task_id`, `category`, `split`, `seed`, and the
        private columns `gold_actions` (JSON list of `{"name", "arguments"}`) and `gold_answer` (JSON list of the facts
        an information answer must contain), listed in `AIRLINE_PRIVATE_COLUMNS`.
    """
    from datasets import Dataset

    tasks = airline_tasks(split, seed=seed, profile=profile)[:n]
    rows = [
        {
            "prompt": airline_prompt(task),
            "task_id": task["task_id"],
            "category": task["category"],
            "split": task["split"],
            "seed": task["seed"],
            "gold_actions": json.dumps(task["gold_actions"]),
            "gold_answer": json.dumps(task["answer_facts"]),
        }
        for task in tasks
    ]
    return Dataset.from_list(rows)
