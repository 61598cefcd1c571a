"""One loss reduction for every trainer: the mean over the global batch, split over processes.

A loss is a mean over items of the global batch: tokens (token-level mean: SFT, PPO) or sequences
(sequence-level mean: reward models, DPO). Each process sums its items' losses and multiplies the sum by
world / (items in the global batch, all processes): DDP then averages the gradients over processes, so
two processes give the gradient of one process with the same global batch, however the items fall.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator


@dataclass(frozen=True)
class GlobalMean:
    """Turns a process's Σ of per-item losses into its part of the global batch's mean."""

    world: int  # processes
    count: float  # items (tokens or sequences) in the global batch, at least 1

    @classmethod
    def over(cls, accelerator: Accelerator, local_items: float) -> GlobalMean:
        """The reduction for a global batch of which this process holds `local_items` items (all-reduced)."""
        local = torch.tensor(float(local_items), device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum").item()
        return cls(accelerator.num_processes, max(total, 1.0))

    def __call__(self, local_sum: torch.Tensor) -> torch.Tensor:
        """Σ of this process's item losses -> its share of the global mean, as DDP averages it."""
        return local_sum * self.world / self.count
