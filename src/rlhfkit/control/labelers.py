"""Who compares two segments: a `Labeler` answers a batch of pairs.

An answer is 1.0 (the first segment is better), 0.0 (the second), 0.5 (equally good) or None (can't tell:
the pair is dropped), the four answers of Christiano et al. 2017 (arXiv:1706.03741, section 2.2.2).
"""

from __future__ import annotations

import random
from typing import Protocol

from rlhfkit.config import ConfigError
from rlhfkit.control.segments import SegmentPairs
from rlhfkit.labeling.simulated import preference_probability


class Labeler(Protocol):
    def label(self, pairs: SegmentPairs) -> list[float | None]:
        """One answer per pair, in order: 1.0, 0.0, 0.5 or None."""
        ...


class SyntheticLabeler:
    """The environment's true reward through the noisy Bradley-Terry labeler of `rlhfkit label simulate`:

        P(σ¹ ≻ σ²) = (1 - ε)·sigma((R¹ - R²) / T) + ε/2,   R = Σ_t r(s_t, a_t), the segment's true return,

    T = 0 always choosing the higher return, as the paper's synthetic oracle (section 3.1); equal returns are a
    tie (0.5), never a coin flip.
    """

    def __init__(self, temperature: float = 0.0, random_prob: float = 0.0, seed: int = 0) -> None:
        self.temperature = temperature
        self.random_prob = random_prob
        self.rng = random.Random(seed)

    def label(self, pairs: SegmentPairs) -> list[float | None]:
        answers: list[float | None] = []
        for first, second in zip(pairs.first.true_returns(), pairs.second.true_returns(), strict=True):
            if first == second:
                answers.append(0.5)
                continue
            p = preference_probability(float(first), float(second), self.temperature, self.random_prob)
            answers.append(1.0 if self.rng.random() < p else 0.0)
        return answers


def make_labeler(name: str, temperature: float, random_prob: float, seed: int) -> Labeler:
    """`synthetic`, or `human` (which needs the feedback app: an error until rlhfkit has one)."""
    if name == "human":
        raise ConfigError(
            "labeler: 'human' is not available yet: it shows clip pairs (rlhfkit.control.render.render_pair) in "
            "the feedback app's pairwise task, which rlhfkit does not have yet; use labeler=synthetic"
        )
    if name != "synthetic":
        raise ConfigError(f"unknown labeler {name!r}; expected one of: synthetic, human")
    return SyntheticLabeler(temperature, random_prob, seed)
