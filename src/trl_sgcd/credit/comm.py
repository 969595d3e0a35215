"""What the credit pipeline needs from the processes of a run: a small interface the trainer supplies.

A sibling group may span ranks, each group's reference is built once (by its owner rank) and every rank must run the
same number of scoring forwards (ZeRO-3), so [`~trl_sgcd.credit.pipeline.CreditPipeline.run`] gathers, sums and takes
maxima across ranks through a [`Comm`]. [`AcceleratorComm`] is the trainer's (accelerate's collectives);
[`SingleProcessComm`] runs the pipeline alone (benchmarks, tests).
"""

from __future__ import annotations

from typing import Protocol

import torch

from trl_sgcd.credit.siblings import owner_of_group

__all__ = ["AcceleratorComm", "Comm", "SingleProcessComm"]


class Comm(Protocol):
    """Collectives over the ranks of a run; every rank calls each method in the same order."""

    rank: int
    world_size: int

    def gather(self, items: list) -> list:
        """Every rank's `items`, concatenated in rank order."""

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of a 1-D tensor over the ranks."""

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum of a 1-D tensor over the ranks."""

    def owner(self, group_index: int) -> int:
        """The rank that builds group `group_index`'s reference."""


class SingleProcessComm:
    """One process: gathers, sums and maxima are the identity; it owns every group."""

    rank, world_size = 0, 1

    def gather(self, items: list) -> list:
        return list(items)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def owner(self, group_index: int) -> int:
        return owner_of_group(group_index, 1)


class AcceleratorComm:
    """accelerate's collectives (`gather_object`, `Accelerator.gather`), round-robin ownership of groups."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    def gather(self, items: list) -> list:
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(values[None]).sum(0)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(values[None]).max(0).values

    def owner(self, group_index: int) -> int:
        return owner_of_group(group_index, self.world_size)
