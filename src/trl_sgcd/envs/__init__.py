"""Built-in tool-use environments. `airline`: a deterministic mini airline customer-service domain (tau-bench style)."""

from .airline import (
    AIRLINE_PRIVATE_COLUMNS,
    AirlineEnv,
    airline_prompt,
    airline_reward,
    airline_tool_schemas,
    contains_fact,
    final_answer,
    make_airline_dataset,
    score_episode,
    tool_names,
)
from .airline_db import build_database
from .airline_tasks import AIRLINE_POLICY, CATEGORIES, SPLIT_MIX, airline_tasks, get_task

__all__ = [
    "AIRLINE_POLICY",
    "AIRLINE_PRIVATE_COLUMNS",
    "CATEGORIES",
    "SPLIT_MIX",
    "AirlineEnv",
    "airline_prompt",
    "airline_reward",
    "airline_tasks",
    "airline_tool_schemas",
    "build_database",
    "contains_fact",
    "final_answer",
    "get_task",
    "make_airline_dataset",
    "score_episode",
    "tool_names",
]
