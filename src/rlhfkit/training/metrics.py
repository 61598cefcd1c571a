"""Step metrics averaged over every micro-batch and every process, not read off the last micro-batch."""

from __future__ import annotations

import torch
from accelerate import Accelerator

Metrics = dict[str, torch.Tensor]  # name -> per-example (or per-token) values


class StepMetrics:
    """Per-example metric values summed over a step's micro-batches; `mean` averages over all processes."""

    def __init__(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}  # key -> (Σ values, count)

    def add(self, metrics: Metrics) -> None:
        for key, values in metrics.items():
            self.add_total(key, values.detach().float().sum(), values.numel())

    def add_total(self, key: str, total: torch.Tensor | float, count: torch.Tensor | float) -> None:
        """Σ of `count` values (e.g. a masked sum and the mask's count)."""
        pair = torch.tensor([float(total), float(count)], dtype=torch.float64)
        self.totals[key] = self.totals[key] + pair if key in self.totals else pair

    def mean(self, accelerator: Accelerator) -> dict[str, float]:
        keys = sorted(self.totals)  # every micro-batch returns the same keys, so every process has them
        local = torch.stack([self.totals[k] for k in keys]).to(accelerator.device)
        totals = accelerator.reduce(local, reduction="sum").tolist()
        return {key: total / count for key, (total, count) in zip(keys, totals, strict=True) if count > 0}
