"""The multi-turn rollout settings that training and evaluation share, in one place.

Training reads them from `GRPOConfig` (`max_tool_calling_iterations`, `max_completion_length`, `temperature`,
`top_p`); evaluation reads the same numbers through [`RolloutHarness`], so that a checkpoint is evaluated under the
harness it was trained in: `RolloutHarness.from_training_args(config)`, or `trl-sgcd eval --config RECIPE.yaml`.

The defaults are the paper's (Table 4): 16 tool-calling turns, a 16,384-token response budget, temperature 0.4, top-p
0.95. The paper's 512-character policy-side observation limit is an option of the environment
(`AirlineEnv(observation_max_chars=512)`, or `trl_sgcd.envs.airline:PaperAirlineEnv`), since the environment is what
renders observations in both training and evaluation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class RolloutHarness:
    r"""
    Rollout settings of one tool-use episode.

    Parameters:
        max_tool_calls (`int` or `None`, *optional*, defaults to `16`):
            Tool-calling rounds per episode (TRL's `max_tool_calling_iterations`): at most `max_tool_calls + 1`
            assistant generations, and the tool calls of the last one are not executed. `None`: no limit but the
            token budget (TRL's meaning of `None`).
        max_completion_length (`int`, *optional*, defaults to `16384`):
            Token budget of the whole episode after the prompt (generated and tool tokens, as TRL counts it).
        temperature (`float`, *optional*, defaults to `0.4`):
            Sampling temperature of sampled rollouts.
        top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus sampling top-p of sampled rollouts.
    """

    max_tool_calls: int | None = 16
    max_completion_length: int = 16384
    temperature: float = 0.4
    top_p: float = 0.95

    @property
    def max_turns(self) -> int:
        """Assistant generations per episode: one per tool-calling round, plus the final answer."""
        return sys.maxsize if self.max_tool_calls is None else self.max_tool_calls + 1

    @classmethod
    def from_training_args(cls, args) -> RolloutHarness:
        """The harness of a `GRPOConfig` / `SGCDConfig` (or any object with its rollout attributes)."""
        default = cls()
        tool_calls = getattr(args, "max_tool_calling_iterations", None)
        return cls(
            max_tool_calls=None if tool_calls is None else int(tool_calls),
            max_completion_length=int(getattr(args, "max_completion_length", None) or default.max_completion_length),
            temperature=float(getattr(args, "temperature", default.temperature)),
            top_p=float(getattr(args, "top_p", default.top_p)),
        )


PAPER_HARNESS = RolloutHarness()
"""The paper's rollout settings (Table 4)."""
