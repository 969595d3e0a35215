"""Expert trajectories of the airline tasks, for the supervised warm start that precedes RL (paper Appendix B).

The paper warm-starts tau3-airline from ~9k successful trajectories of a strong agent. Here the gold solution of each
task is rendered as a tool-calling conversation instead: system (policy), user (request), then for each gold call an
assistant message with `tool_calls` and a tool message holding the REAL observation (the call executed on a fresh
environment), and a final assistant answer (states the facts, confirms the action, or refuses politely). The messages
follow the format that `tokenizer.apply_chat_template(messages, tools=...)` renders with TRL's ChatML tool template,
and `expert_sft_dataset` packs them for `SFTTrainer` (`messages` plus a JSON `tools` column, which SFTTrainer decodes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from trl_sgcd.envs.airline import airline_environment, airline_prompt, airline_tool_schemas
from trl_sgcd.envs.airline_tasks import airline_tasks, get_task


def expert_conversation(task: dict) -> list[dict]:
    """The expert conversation of one task (see the module docstring), observations executed on a fresh environment.

    Args:
        task (`dict`):
            A task from `airline_tasks` / `get_task`.

    Returns:
        `list[dict]`: Messages: system, user, (assistant with one tool call, tool)*, final assistant answer.
    """
    env = airline_environment(task.get("profile", "full"))(task["seed"])  # the observations the policy will see
    env.reset(task_id=task["task_id"], seed=task["seed"])
    messages = airline_prompt(task)
    for action in task["gold_actions"]:
        name, arguments = action["name"], dict(action["arguments"])
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        observation = getattr(env, name)(**arguments)
        if env.calls[-1]["error"] is not None:
            raise RuntimeError(f"gold action {action} of {task['task_id']} failed: {observation}")
        messages.append({"role": "tool", "name": name, "content": observation})
    messages.append({"role": "assistant", "content": task["expert_answer"]})
    return messages


def _tasks(dataset_or_split, seed: int) -> list[dict]:
    if isinstance(dataset_or_split, str):
        return airline_tasks(dataset_or_split, seed=seed)
    return [get_task(row["task_id"], seed=int(row.get("seed", seed))) for row in dataset_or_split]


def expert_conversations(dataset_or_split="train", *, seed: int = 0) -> list[list[dict]]:
    """Expert conversations of a split (`"train"` / `"test"`) or of the rows of an airline dataset (by `task_id`).

    Args:
        dataset_or_split (`str`, `datasets.Dataset` or `list[dict]`, *optional*, defaults to `"train"`):
            A split name, or rows with a `task_id` (and optionally a `seed`) column, e.g. `make_airline_dataset(...)`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the tasks (a row's own `seed` column wins).

    Returns:
        `list[list[dict]]`: One conversation per task, in order.
    """
    return [expert_conversation(task) for task in _tasks(dataset_or_split, seed)]


def expert_sft_dataset(split: str = "train", seed: int = 0, profile: str = "full"):
    """Expert conversations as an `SFTTrainer` dataset.

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            Task split. Use `"train"`: the test split is held out.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the tasks.
        profile (`str`, *optional*, defaults to `"full"`):
            Task profile (`"full"` or `"compact"`): its tasks, policy and tool schemas.

    Returns:
        `datasets.Dataset`: Columns `messages` (each message stored as a JSON object, so tool-call arguments keep their
        own keys instead of being merged into one Arrow struct), `tools` (JSON string of the tool schemas; SFTTrainer
        `json.loads` it), `task_id` and `category`.
    """
    from datasets import Dataset, Features, Json, List, Value

    tasks = airline_tasks(split, seed=seed, profile=profile)
    tools = json.dumps(airline_tool_schemas(profile))
    rows = [
        {"messages": expert_conversation(t), "tools": tools, "task_id": t["task_id"], "category": t["category"]}
        for t in tasks
    ]
    features = Features(
        {"messages": List(Json()), "tools": Value("string"), "task_id": Value("string"), "category": Value("string")}
    )
    return Dataset.from_list(rows, features=features)


def expert_turn_ids(
    tokenizer, conversation: list[dict], tools: list | None = None
) -> list[tuple[list[int], list[int]]]:
    """For each assistant message: (prompt ids up to the generation prompt, the ids the assistant would generate).

    The completion ids are the rendered assistant turn up to and including the end-of-turn token, i.e. what a policy
    that imitates the expert perfectly would emit.
    """
    pairs = []
    for j, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(
            conversation[:j], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(conversation[: j + 1], tools=tools, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        if list(full[: len(prefix)]) != list(prefix):
            raise ValueError("the chat template does not preserve the prefix of an assistant turn")
        ids = list(full[len(prefix) :])
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        pairs.append((list(prefix), ids))
    return pairs


def expert_generate_fn(tokenizer, conversations: Sequence[list[dict]], tools: list | None = None):
    """A scripted `GenerateFn` for `trl_sgcd.tooluse.evaluation`: answers each prompt with the expert's next assistant turn.

    Prompts are matched by their exact token ids, so a rollout loop that parses, executes and re-renders faithfully
    reproduces every expert prompt; any divergence raises `KeyError`.
    """
    tools = airline_tool_schemas() if tools is None else tools
    script = {tuple(p): ids for conv in conversations for p, ids in expert_turn_ids(tokenizer, conv, tools)}

    def generate(prompt_ids: list[list[int]]) -> list[list[int]]:
        try:
            return [list(script[tuple(p)]) for p in prompt_ids]
        except KeyError:
            raise KeyError("a prompt of the rollout loop is not one of the expert prompts") from None

    return generate
