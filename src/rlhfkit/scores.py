"""Scores shared by the stages: gold scores of replies, a model of a noisy labeler, Bradley-Terry strengths,
calibration of predicted probabilities and diversity of samples. Pure functions.

The simulated labeler prefers A to B with probability

    P(A ≻ B) = (1 - ε)·sigma((s_A - s_B) / T) + ε/2

where s is the gold score of a reply, T a temperature (0: always the higher score) and ε the chance of
answering uniformly at random (Christiano et al. 2017, arXiv:1706.03741, section 2.2.3, take ε = 0.1).
One judgement per prompt is drawn as one noisy utility per reply, u = s/T + g with g ~ Gumbel(0, 1):
the difference of two Gumbel variables is logistic, so P(u_A > u_B) = sigma((s_A - s_B)/T) exactly, and
sorting by u draws a Plackett-Luce ranking with those pairwise marginals (the Gumbel-max trick).

Bradley-Terry (Bradley & Terry 1952): player i beats player j with probability σ(θ_i - θ_j), a tie counts
half a win to each side; `bradley_terry` maximises the likelihood by Newton's method with a weak prior
(see `evaluation/leaderboard.py` for the derivation and the bootstrap intervals).
"""

from __future__ import annotations

import functools
import importlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.records import Text

GoldFunction = Callable[[Text, str], float]  # (prompt, response) -> score, higher is better


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(prompt: Text, response: str) -> float:
    """VADER's compound sentiment of the response, in [-1, 1] (Hutto & Gilbert 2014)."""
    return _vader().polarity_scores(response)["compound"]


def length(prompt: Text, response: str) -> float:
    """Number of words of the response."""
    return float(len(response.split()))


GOLD: dict[str, GoldFunction] = {"vader": vader, "length": length}


def gold_function(name: str) -> GoldFunction:
    """A name from GOLD, or `python:module:function` for any function (prompt, response) -> float."""
    if name.startswith("python:"):
        module_name, _, function_name = name.removeprefix("python:").partition(":")
        try:
            return getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ConfigError(
                f"gold {name!r}: cannot load {function_name or '?'} from {module_name!r}: {error}"
            ) from None
    if name not in GOLD:
        raise ConfigError(f"unknown gold score {name!r}; expected one of: {', '.join(GOLD)}, python:module:function")
    return GOLD[name]


def preference_probability(s_a: float, s_b: float, temperature: float, random_prob: float) -> float:
    """P(A ≻ B) of the module docstring (T = 0: 1, 0.5 or 0 by the sign of s_A - s_B, before ε)."""
    gap = s_a - s_b
    step = 0.5 if gap == 0 else float(gap > 0)
    informed = step if temperature == 0 else 1 / (1 + math.exp(-gap / temperature))
    return (1 - random_prob) * informed + random_prob / 2


def noisy_utilities(scores: list[float], temperature: float, random_prob: float, rng: random.Random) -> list[float]:
    """One judgement: u_i = s_i/T + Gumbel noise, plain scores when T = 0, pure noise with probability ε."""

    def gumbel() -> float:
        return -math.log(-math.log(rng.random() or 1e-300))

    if rng.random() < random_prob:
        return [gumbel() for _ in scores]
    if temperature == 0:
        return list(scores)
    return [s / temperature + gumbel() for s in scores]


def competition_ranks(utilities: list[float]) -> list[int]:
    """1 for the highest utility, equal utilities tie ("1224" ranking): 1 + how many are strictly higher."""
    return [1 + sum(other > u for other in utilities) for u in utilities]


@dataclass(frozen=True)
class Judgements:
    """G pairwise judgements: `score` is what `first` scored against `second` (1 win, 0.5 tie, 0 loss)."""

    first: torch.Tensor  # (G,) long, player index
    second: torch.Tensor  # (G,) long
    score: torch.Tensor  # (G,) float in [0, 1]

    @classmethod
    def of(cls, games: list[tuple[int, int, float]]) -> Judgements:
        """From (first, second, score) triples."""
        first, second, score = zip(*games, strict=True) if games else ((), (), ())
        return cls(
            torch.tensor(first, dtype=torch.long),
            torch.tensor(second, dtype=torch.long),
            torch.tensor(score, dtype=torch.float64),
        )

    def __len__(self) -> int:
        return len(self.score)


def win_matrix(judgements: Judgements, players: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """W: (..., P, P), W_ij = points i scored against j (ties half to each), each game weighted by `weights`
    ((..., G) counts, e.g. of a bootstrap resample; default 1)."""
    score = judgements.score.double()
    weights = torch.ones_like(score) if weights is None else weights.double()
    batch = weights.shape[:-1]
    forward = judgements.first * players + judgements.second  # (G,) flat index of W_ij
    backward = judgements.second * players + judgements.first
    wins = torch.zeros(*batch, players * players, dtype=torch.float64)
    wins.index_add_(-1, forward, weights * score).index_add_(-1, backward, weights * (1 - score))
    return wins.view(*batch, players, players)


def bradley_terry(
    wins: torch.Tensor, prior: float = 1.0, iterations: int = 100, tolerance: float = 1e-10
) -> torch.Tensor:
    """θ: (..., P) maximum-likelihood strengths (mean 0) from win matrices (..., P, P), by Newton's method
    on the concave log-likelihood of `evaluation/leaderboard.py` with `prior` tied games per player against a
    virtual player of θ = 0:

        g_i = W_i - Σ_j N_ij σ(θ_i - θ_j) + prior·(1/2 - σ(θ_i))                       (gradient)
        I_ii = Σ_j N_ij p_ij (1 - p_ij) + prior·σ(θ_i)(1 - σ(θ_i)),  I_ij = -N_ij p_ij (1 - p_ij)   (-Hessian)
        θ ← θ + I⁻¹ g,

    each step shrunk to move no θ by more than 1 (a damped start far from the optimum), until no θ moves
    more than `tolerance` (quadratic convergence: a handful of steps), at most `iterations` steps. I is
    positive definite with a prior; without one, θ is fitted up to its mean (g sums to 0).
    """
    wins = wins.double()
    games = wins + wins.transpose(-1, -2)  # N_ij
    points = wins.sum(-1)  # W_i
    if prior == 0 and torch.any(points == 0):
        raise ValueError("a player without a single point has strength -inf: use prior > 0")
    theta = torch.zeros(wins.shape[:-1], dtype=torch.float64)  # (..., P)
    ridge = 1e-9 * torch.eye(wins.shape[-1], dtype=torch.float64)  # only the flat direction θ + c when prior = 0
    for _ in range(iterations):
        p = torch.sigmoid(theta.unsqueeze(-1) - theta.unsqueeze(-2))  # p_ij, (..., P, P)
        q = torch.sigmoid(theta)  # σ(θ_i): P(i ≻ the virtual player)
        gradient = points - (games * p).sum(-1) + prior * (0.5 - q)
        curvature = games * p * (1 - p)
        information = torch.diag_embed(curvature.sum(-1) + prior * q * (1 - q)) - curvature + ridge
        step = torch.linalg.solve(information, gradient)
        largest = step.abs().amax(-1, keepdim=True)
        theta = theta + step / largest.clamp(min=1.0)
        if largest.max() < tolerance:
            break
    return theta - theta.mean(-1, keepdim=True)


def expected_calibration_error(prob: torch.Tensor, outcome: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """ECE = Σ_b (n_b / N)·|mean outcome_b - mean prob_b| over equal-width bins of the predicted probability.

    Naeini et al. 2015; Guo et al. 2017 (arXiv:1706.04599, eq. 3). prob, outcome: (N,), outcome in [0, 1]
    (a tie is 0.5). The last bin includes 1.
    """
    which = (prob * bins).long().clamp(max=bins - 1)  # (N,) bin of each prediction
    total = torch.zeros(())
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap = (outcome[in_bin].float().mean() - prob[in_bin].float().mean()).abs()
            total = total + in_bin.float().mean() * gap
    return total


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the word sequences (Li et al. 2016): 0 = repetitive, 1 = varied."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(1, len(grams))
