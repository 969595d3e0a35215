"""Built-in tool-use environments. `airline`: a deterministic mini airline customer-service domain (tau-bench style),
in two profiles: `AirlineEnv` (full, the default) and `CompactAirlineEnv` (compact, for CPU experiments)."""

from .airline import (
    AIRLINE_PRIVATE_COLUMNS,
    AirlineBase,
    AirlineEnv,
    airline_environment,
    airline_prompt,
    airline_reward,
    airline_tool_schemas,
    contains_fact,
    final_answer,
    make_airline_dataset,
    score_episode,
    tool_names,
)
from .airline_compact import CompactAirlineEnv
from .airline_db import build_database
from .airline_tasks import AIRLINE_POLICY, CATEGORIES, COMPACT_POLICY, SPLIT_MIX, airline_tasks, get_task

__all__ = [
    "AIRLINE_POLICY",
    "AIRLINE_PRIVATE_COLUMNS",
    "CATEGORIES",
    "COMPACT_POLICY",
    "SPLIT_MIX",
    "AirlineBase",
    "AirlineEnv",
    "CompactAirlineEnv",
    "airline_environment",
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
