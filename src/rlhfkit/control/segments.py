"""Trajectory segments, the pairs of them a labeler compares, and which pairs to ask about and when.

Christiano et al. 2017 (arXiv:1706.03741): a segment σ is a sequence of (observation, action) pairs of 1-2 s of
environment time (section 2.2.1); the queries are pairs with the most disagreement among the reward-model
ensemble (section 2.2.4); labels come at a rate decreasing with time (appendix A.1). A segment cut from an
episode that ends by termination (a fall, not a time limit) is padded after the termination step with the
absorbing "ended" state: `mask` is False there and the true reward 0, which is what makes falling visible to a
labeler who compares sums of reward. For a human labeler each step also keeps the simulator's `states`, from
which its picture is drawn again later (rlhfkit.control.render.render_segment); None otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass
class Segments:
    """N segments of L steps: obs (N, L, d_obs), actions (N, L, d_act), true_rewards (N, L), mask (N, L) bool;
    states (N, L, d_state) the simulator's, or None when not recorded."""

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    mask: np.ndarray
    states: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.mask)

    def __getitem__(self, index: np.ndarray | slice) -> Segments:
        return Segments(**{f.name: _index(getattr(self, f.name), index) for f in fields(self)})  # type: ignore[arg-type]  # None only for `states`

    def true_returns(self) -> np.ndarray:
        """Σ_t r(s_t, a_t) of the environment's own reward, per segment: (N,). Padding adds 0."""
        return self.true_rewards.sum(1)

    @staticmethod
    def concat(parts: list[Segments]) -> Segments:
        """The parts one after the other; states only when every part has them."""
        return Segments(**{f.name: _concat([getattr(p, f.name) for p in parts]) for f in fields(Segments)})  # type: ignore[arg-type]  # None only for `states`


def _index(array: np.ndarray | None, index: np.ndarray | slice) -> np.ndarray | None:
    return None if array is None else array[index]


def _concat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    present = [a for a in arrays if a is not None]
    return None if len(present) < len(arrays) else np.concatenate(present)


@dataclass
class SegmentPairs:
    """P pairs of segments to compare: `first[i]` against `second[i]`."""

    first: Segments
    second: Segments

    def __len__(self) -> int:
        return len(self.first)


@dataclass
class Episode:
    """One recorded episode: obs (T, d_obs), actions (T, d_act) encoded, true_rewards (T,); `terminated` is True
    when it ended by termination (False: a time limit, or still running); states (T, d_state) or None."""

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    terminated: bool
    states: np.ndarray | None = None


def cut_segments(episode: Episode, length: int, rng: np.random.Generator) -> Segments | None:
    """Non-overlapping segments of `length` steps from a random phase; after a termination, one more segment
    holding the episode's last steps, padded to `length`. None if nothing fits (a short unfinished episode).
    """
    steps = len(episode.true_rewards)
    phase = int(rng.integers(length)) if steps > length else 0
    starts = list(range(phase, steps - length + 1, length))
    tail = starts[-1] + length if starts else phase
    if episode.terminated and tail < steps:
        starts.append(tail)
    if not starts:
        return None
    index = np.asarray(starts)[:, None] + np.arange(length)  # (N, L), past the end for the padded segment
    mask = index < steps
    index = np.minimum(index, steps - 1)
    return Segments(
        obs=episode.obs[index],
        actions=episode.actions[index],
        true_rewards=np.where(mask, episode.true_rewards[index], 0.0).astype(np.float32),
        mask=mask,
        states=_index(episode.states, index),  # padding repeats the last state: the clip holds its last picture
    )


def labels_due(
    timesteps: int, total_timesteps: int, total_labels: int, initial_fraction: float, timescale: float
) -> int:
    """How many labels should exist after `timesteps` environment steps, front-loaded.

    Christiano et al. 2017, appendix A.1: a share N₀ = initial_fraction·N up front (from the untrained policy),
    then a labelling rate ∝ τ/(T + τ) with τ = 2·10⁶. Integrating that rate gives

        N(T) = N₀ + (N - N₀)·ln(1 + T/τ) / ln(1 + T_total/τ),

    so N(0) = N₀ and N(T_total) = N.
    """
    initial = round(initial_fraction * total_labels)
    done = math.log1p(min(timesteps, total_timesteps) / timescale) / math.log1p(total_timesteps / timescale)
    return initial + math.floor((total_labels - initial) * done + 1e-9)


def disagreement(probabilities: torch.Tensor) -> torch.Tensor:
    """Var_k P̂_k[σ¹ ≻ σ²]: the variance over the K members of each pair's predicted preference; (K, M) -> (M,).

    Christiano et al. 2017, section 2.2.4: query the pairs whose predictions vary most across the ensemble.
    """
    return probabilities.var(0, unbiased=False)


def _by_disagreement(probabilities: torch.Tensor, n: int, rng: np.random.Generator) -> np.ndarray:
    return disagreement(probabilities).argsort(descending=True)[:n].numpy()


def _at_random(probabilities: torch.Tensor, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(probabilities.shape[1])[:n]


# (members' P̂ (K, M), how many to pick, rng) -> indices of the chosen candidate pairs
SELECTORS: dict[str, Callable[[torch.Tensor, int, np.random.Generator], np.ndarray]] = {
    "disagreement": _by_disagreement,
    "random": _at_random,
}


def candidate_pairs(count: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` random pairs (first, second) of distinct segments among `count`, each unordered pair at most once."""
    first = rng.integers(count, size=n)
    second = (first + rng.integers(1, count, size=n)) % count  # uniform over the other count - 1
    _, keep = np.unique(np.minimum(first, second) * count + np.maximum(first, second), return_index=True)
    keep.sort()
    return first[keep], second[keep]


@dataclass
class Comparisons:
    """The labelled pairs so far: labels (P,) in {1, 0.5, 0} (1: first preferred); validation (P,) bool, the
    held-out split, fixed when a comparison arrives so that it never moves into training later."""

    pairs: SegmentPairs
    labels: np.ndarray
    validation: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: np.ndarray) -> Comparisons:
        pairs = SegmentPairs(self.pairs.first[index], self.pairs.second[index])
        return Comparisons(pairs, self.labels[index], self.validation[index])

    def extend(self, other: Comparisons) -> Comparisons:
        pairs = SegmentPairs(
            *(
                Segments.concat([a, b])
                for a, b in ((self.pairs.first, other.pairs.first), (self.pairs.second, other.pairs.second))
            )
        )
        return Comparisons(
            pairs, np.concatenate([self.labels, other.labels]), np.concatenate([self.validation, other.validation])
        )

    def save(self, path: str) -> None:
        arrays = {
            f"{side}_{f.name}": getattr(getattr(self.pairs, side), f.name)
            for side in ("first", "second")
            for f in fields(Segments)
            if getattr(getattr(self.pairs, side), f.name) is not None
        }
        np.savez_compressed(path, labels=self.labels, validation=self.validation, **arrays)

    @staticmethod
    def load(path: str) -> Comparisons:
        data = np.load(path)
        first, second = (
            Segments(**{f.name: data.get(f"{side}_{f.name}") for f in fields(Segments)}) for side in ("first", "second")
        )
        return Comparisons(SegmentPairs(first, second), data["labels"], data["validation"])
