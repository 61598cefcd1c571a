"""A Bradley-Terry leaderboard: strengths fitted to pairwise judgements by maximum likelihood, with bootstrap
confidence intervals, as Chatbot Arena now does instead of order-dependent online Elo (Chiang et al. 2024,
arXiv:2403.04132, section 5).

Model (Bradley & Terry 1952): player i beats player j with probability

    P(i ≻ j) = π_i / (π_i + π_j) = σ(θ_i - θ_j),    θ = log π,

and a tie counts half a win to each side. With W_ij the points i scored against j (wins + ties/2) and
N_ij = W_ij + W_ji the games between them, the log-likelihood is L(θ) = Σ_ij W_ij log σ(θ_i - θ_j).
L is concave in θ and is maximised by Newton's method (`bradley_terry`): a handful of steps, where the MM
algorithm of Hunter (2004, "MM algorithms for generalized Bradley-Terry models", Ann. Statist. 32(1), eq. 3),
π_i ← W_i / Σ_j N_ij / (π_i + π_j), needs hundreds (it is linear, slow along weakly determined directions).

The maximum exists only when every player has both won and lost against the rest, directly or through others
(Ford 1957; Hunter 2004, assumption 1): a player who never lost has θ = +∞. So each player also plays `prior`
fictitious tied games against a virtual player of fixed strength θ = 0, a weak prior that keeps every θ
finite and disappears as real games accumulate. θ is defined up to a constant: strengths are reported
relative to their mean (or to one player, the anchor). Elo-like display: 1000 + 400/ln 10 · θ.

Confidence intervals: the judgements are resampled with replacement, the model refitted on each resample,
and the percentile interval of each (anchored) strength taken (Chatbot Arena's bootstrap).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from rlhfkit.scores import Judgements, bradley_terry, win_matrix

ELO_SCALE = 400 / math.log(10)  # Elo points per unit of θ: P(i ≻ j) = 1 / (1 + 10^(-(R_i - R_j)/400))
ELO_BASE = 1000.0


def anchored(theta: torch.Tensor, anchor: int | None = None) -> torch.Tensor:
    """θ relative to player `anchor` (θ_anchor = 0), or to the players' mean when anchor is None."""
    base = theta.mean(-1, keepdim=True) if anchor is None else theta[..., anchor : anchor + 1]
    return theta - base


def bootstrap_strengths(
    judgements: Judgements,
    players: int,
    resamples: int = 1000,
    prior: float = 1.0,
    seed: int = 0,
    anchor: int | None = None,
    chunk: int = 100,
) -> torch.Tensor:
    """(resamples, P) anchored strengths fitted to judgements drawn with replacement (G of G each time)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(judgements)
    fits = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = torch.randint(n, (size, n), generator=generator)  # (B, G) indices of the resampled games
        counts = torch.zeros(size, n, dtype=torch.float64).scatter_add_(1, drawn, torch.ones(size, n).double())
        fits.append(anchored(bradley_terry(win_matrix(judgements, players, counts), prior), anchor))
    return torch.cat(fits)


def elo(theta: float) -> float:
    """The Elo-scale rating of a strength: 1000 + 400/ln 10 · θ."""
    return ELO_BASE + ELO_SCALE * theta


@dataclass(frozen=True)
class Standing:
    """One player's row of the leaderboard: strength θ with its bootstrap interval, and its record."""

    name: str
    strength: float
    lower: float
    upper: float
    games: int
    points: float  # wins + ties/2

    @property
    def elo(self) -> tuple[float, float, float]:
        """(rating, lower, upper) on the Elo scale."""
        return elo(self.strength), elo(self.lower), elo(self.upper)

    def to_json(self) -> dict:
        rating, lower, upper = self.elo
        return asdict(self) | {"elo": rating, "elo_lower": lower, "elo_upper": upper}


def leaderboard(
    names: list[str],
    judgements: Judgements,
    resamples: int = 1000,
    confidence: float = 0.95,
    prior: float = 1.0,
    seed: int = 0,
    anchor: str | None = None,
) -> list[Standing]:
    """Players sorted by fitted strength, each with the percentile bootstrap interval at `confidence`."""
    index = None if anchor is None else names.index(anchor)
    theta = anchored(bradley_terry(win_matrix(judgements, len(names)), prior), index)
    alpha = 1 - confidence
    if resamples:
        fits = bootstrap_strengths(judgements, len(names), resamples, prior, seed, index)
        lower, upper = torch.quantile(fits, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64), dim=0)
    else:
        lower = upper = theta
    wins = win_matrix(judgements, len(names))
    games = (wins + wins.T).sum(-1)
    rows = [
        Standing(name, theta[i].item(), lower[i].item(), upper[i].item(), round(games[i].item()), wins[i].sum().item())
        for i, name in enumerate(names)
    ]
    return sorted(rows, key=lambda s: -s.strength)
