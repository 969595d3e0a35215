"""Ending one rollout early: an environment whose `done` attribute is true gets no further assistant turn.

TRL 1.16's tool loop (`GRPOTrainer._tool_call_loop`) generates again after every tool call, for as long as the model
asks for tools (up to `max_tool_calling_iterations`), and has no per-rollout stop: a τ² `transfer_to_human_agents`, a
simulated user saying `###STOP###`, a game that is won, all get another model turn. The protocol here is one attribute:

```python
class MyEnv:
    def reset(self, **kwargs): self.done = False
    def finish(self, answer: str) -> str:
        "Submit the answer; ends the episode."
        self.done = True
        return "submitted"
```

`done` must be a plain attribute or a property, never a method (TRL would expose a public method as a tool). After a
tool call, when its environment is `done`, that rollout leaves the loop: no further assistant turn is generated, and
the rows still running go on. How, with two overrides in `SGCDTrainer` and nothing copied from TRL:

1. `_generate`: [`watch_episode_ends`] wraps this batch's per-rollout tool functions (`_sync_tool_dicts`,
   `_async_tool_dicts`, built by TRL just before `_generate`). A result returned while the environment is `done` comes
   back as a [`FinalResult`], a `str` that TRL's `str(result)` keeps as it is.
2. `_get_tool_suffix_ids`: [`end_episode_suffix`] gives such a row a suffix longer than the completion budget, so
   TRL's own budget check takes the row out of the loop before the next generation, "with its completion as-is":
   the loop rolls the tool results of that turn back out of the conversation.

What the rollout is then: its token ids end with the assistant turn that made the final call (end-of-turn token
included, so it is not counted as truncated); the final tool result is in the environment (for τ²: its trajectory,
which τ²'s evaluator replays) but not in the token ids or the completion messages, since no turn conditions on it.
Results that are lists of content blocks (multimodal tools) cannot be marked and do not end the loop.
"""

from __future__ import annotations

import functools
import inspect


class FinalResult(str):
    """A tool result after which the episode is over (`str(result)` returns it unchanged, so TRL keeps the mark)."""

    def __str__(self) -> str:
        return self


def episode_done(environment) -> bool:
    """Whether `environment` marks its episode as over (`environment.done`, absent means no)."""
    return bool(getattr(environment, "done", False))


def _mark(result, environment):
    if isinstance(result, list) or not episode_done(environment):
        return result
    return FinalResult(result if isinstance(result, str) else str(result))


def _watched(tool, environment):
    if inspect.iscoroutinefunction(tool):

        @functools.wraps(tool)
        async def watched(*args, **kwargs):
            return _mark(await tool(*args, **kwargs), environment)

    else:

        @functools.wraps(tool)
        def watched(*args, **kwargs):
            return _mark(tool(*args, **kwargs), environment)

    watched.__sgcd_watched__ = True
    return watched


def watch_episode_ends(environments, tool_dicts) -> None:
    """Wrap the batch's per-rollout tool functions so a result returned once the environment is `done` is final.

    Args:
        environments (`list` or `None`): the batch's environments, one per rollout (`None`: nothing to watch).
        tool_dicts (`Iterable[list[dict] | None]`): lists of per-rollout `{name: tool}` dicts (TRL's sync and async
            ones), wrapped in place.
    """
    if not environments:
        return
    for dicts in tool_dicts:
        for tools, environment in zip(dicts or [], environments, strict=False):
            for name, tool in tools.items():
                if not getattr(tool, "__sgcd_watched__", False):
                    tools[name] = _watched(tool, environment)


def end_episode_suffix(
    tool_messages: list[dict], suffix_ids: list[int], *, pad_token_id: int | None, max_completion_length: int
) -> list[int]:
    """`suffix_ids`, or, after a final result, a suffix past the completion budget (TRL then ends that rollout)."""
    if not any(isinstance(message.get("content"), FinalResult) for message in tool_messages):
        return suffix_ids
    filler = pad_token_id or 0  # never generated from: the row leaves the loop with this turn
    return suffix_ids + [filler] * (max_completion_length + 1)
