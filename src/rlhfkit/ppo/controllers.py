"""The state PPO carries from one rollout to the next: the KL coefficient β and running reward moments.

Both have `state_dict` / `load_state_dict`, so accelerate saves them in checkpoints and a resumed run
continues with the β and the reward statistics it had.
"""

from __future__ import annotations

import math


class KLController:
    """β of the KL penalty. Fixed unless `target` is set; then the adaptive rule of Ziegler et al. 2019
    (arXiv:1909.08593, section 2.2):

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),     β_t+1 = β_t·(1 + K_β·e_t),     K_β = n / horizon

    where KL_t is the batch's mean KL per sequence and n the episodes in the batch (they use K_β = 0.1
    with n / horizon: β moves by at most 20% × n / horizon per update).
    """

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10_000) -> None:
        self.beta = beta
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.beta *= 1 + error * episodes / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = state["beta"]


class RunningMoments:
    """Mean and standard deviation of every score seen so far, merged batch by batch (Chan et al. 1979's
    parallel variance update), for reward normalisation: s' = (s - mean) / std."""

    def __init__(self) -> None:
        self.count = 0.0
        self.mean = 0.0
        self.m2 = 0.0  # Σ (x - mean)²

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def update(self, count: float, mean: float, var: float) -> None:
        """Merge a batch given by its size, mean and (population) variance."""
        total = self.count + count
        delta = mean - self.mean
        self.m2 += var * count + delta**2 * self.count * count / total
        self.mean += delta * count / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]
