"""The reward-model side of the loop: choose pairs, ask the labeler, refit the ensemble, renormalise it.

Christiano et al. 2017 (arXiv:1706.03741), section 2.2: the pairs asked are those the ensemble disagrees on
most among random candidates (2.2.4); every label so far trains the ensemble (2.2.3), whose L2 weight follows
the held-out loss (appendix A.1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, field_validator

from rlhfkit.config import Config
from rlhfkit.control.labelers import Labeler
from rlhfkit.control.reward_model import (
    RewardEnsemble,
    adapt_l2,
    fit,
    predicted_returns,
    preference_probabilities,
)
from rlhfkit.control.segments import SELECTORS, Comparisons, SegmentPairs, Segments, candidate_pairs


class RewardModelSettings(Config):
    """The ensemble, its fitting and its queries (Christiano et al. 2017, section 2.2 and appendix A.1)."""

    members: int = Field(3, ge=1, description="ensemble size")
    hidden: int = Field(64, ge=1, description="units in each of the two hidden layers (leaky ReLU)")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate")
    epochs: int = Field(8, ge=1, description="passes over each member's bootstrap resample per fit")
    batch_size: int = Field(32, ge=1, description="comparisons per minibatch")
    l2: float = Field(1e-3, ge=0, description="initial L2 weight, adapted after each fit (val/train loss in 1.1-1.5)")
    random_prob: float = Field(0.1, ge=0, lt=1, description="ε: the labeler's modelled chance of a random answer")
    validation_fraction: float = Field(1 / math.e, ge=0, lt=1, description="held-out share of the labels (1/e)")
    query_selection: str = Field(
        "disagreement", description=f"which candidate pairs to ask about: {' or '.join(SELECTORS)}"
    )
    candidates_per_query: int = Field(10, ge=1, description="random candidate pairs drawn per pair asked")

    @field_validator("query_selection")
    @classmethod
    def _known_selection(cls, name: str) -> str:
        if name not in SELECTORS:
            raise ValueError(f"unknown query selection; expected one of: {', '.join(SELECTORS)}")
        return name


def reward_correlation(model: RewardEnsemble, segments: Segments) -> float:
    """Spearman's ρ between the ensemble's mean predicted return and the true return of these segments, for the
    log only (the true reward never reaches the agent); 0 when either is constant."""
    from scipy.stats import spearmanr

    rho = spearmanr(predicted_returns(model, segments).mean(0).numpy(), segments.true_returns()).statistic
    return float(rho) if np.isfinite(rho) else 0.0


class PreferenceLearner:
    """The labels so far (`comparisons`), how many pairs were asked (`queries`, "can't tell" included), the
    current L2 weight and the ensemble fitted to them."""

    def __init__(self, model: RewardEnsemble, labeler: Labeler, settings: RewardModelSettings) -> None:
        self.model = model
        self.labeler = labeler
        self.settings = settings
        self.comparisons: Comparisons | None = None
        self.queries = 0
        self.l2 = settings.l2

    def query(self, pool: Segments, n: int, rng: np.random.Generator) -> Comparisons | None:
        """Ask about n pairs of the pool, chosen among n·candidates_per_query random ones; the answered pairs."""
        first, second = candidate_pairs(len(pool), n * self.settings.candidates_per_query, rng)
        probabilities = preference_probabilities(self.model, pool[first], pool[second])  # (K, candidates)
        chosen = SELECTORS[self.settings.query_selection](probabilities, n, rng)
        pairs = SegmentPairs(pool[first[chosen]], pool[second[chosen]])
        answers = self.labeler.label(pairs)
        self.queries += len(pairs)
        kept = np.asarray([i for i, answer in enumerate(answers) if answer is not None], dtype=np.int64)
        if not len(kept):
            return None
        labels = np.asarray([answers[i] for i in kept], dtype=np.float32)
        validation = rng.random(len(kept)) < self.settings.validation_fraction
        return Comparisons(SegmentPairs(pairs.first[kept], pairs.second[kept]), labels, validation)

    def update(self, pool: Segments, due: int, rng: np.random.Generator) -> dict[str, float]:
        """Ask for the labels the schedule has made due (pairs from the pool), refit on all labels, adapt L2,
        and normalise the agent's reward over the pool's steps. Returns the log's metrics."""
        if len(pool) >= 2 and due > self.queries:
            new = self.query(pool, due - self.queries, rng)
            if new is not None:
                self.comparisons = new if self.comparisons is None else self.comparisons.extend(new)
        metrics = {"labels": float(len(self.comparisons or ())), "queries": float(self.queries)}
        if self.comparisons is None or self.comparisons.validation.all():
            return metrics
        s = self.settings
        metrics |= fit(
            self.model,
            self.comparisons,
            l2=self.l2,
            epochs=s.epochs,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            random_prob=s.random_prob,
            rng=rng,
        )
        if "rm/val_loss" in metrics:
            self.l2 = adapt_l2(self.l2, metrics["rm/train_loss"], metrics["rm/val_loss"])
        pairs = self.comparisons.pairs
        ended = bool((~pairs.first.mask).any() or (~pairs.second.mask).any())
        obs, actions = (torch.from_numpy(a[pool.mask]).float() for a in (pool.obs, pool.actions))
        self.model.set_normalisation(obs, actions, seen_termination=ended)
        return metrics | {"rm/l2": self.l2, "rm/spearman": reward_correlation(self.model, pool)}

    def reward(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The agent's reward for a batch of steps: (n, d_obs), (n, d_act) -> (n,)."""
        return self.model.reward(torch.from_numpy(obs).float(), torch.from_numpy(actions).float()).numpy()

    def save(self, directory: Path) -> None:
        torch.save({"model": self.model.state_dict(), "queries": self.queries, "l2": self.l2}, directory / "reward.pt")
        if self.comparisons is not None:
            self.comparisons.save(str(directory / "comparisons.npz"))

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "reward.pt")
        self.model.load_state_dict(state["model"])
        self.queries, self.l2 = state["queries"], state["l2"]
        if (directory / "comparisons.npz").exists():
            self.comparisons = Comparisons.load(str(directory / "comparisons.npz"))
