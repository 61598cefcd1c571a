import math

import pytest
import torch

from rlhfkit.evaluation.leaderboard import ELO_SCALE, anchored, bootstrap_strengths, elo, leaderboard
from rlhfkit.scores import Judgements, bradley_terry, win_matrix

TRUE = torch.tensor([-1.0, -0.3, 0.4, 0.9], dtype=torch.float64)  # mean 0


def simulated_games(strengths: torch.Tensor, games: int, seed: int) -> Judgements:
    """Random pairs of distinct players; the first wins with probability sigma(θ_first - θ_second)."""
    generator = torch.Generator().manual_seed(seed)
    players = len(strengths)
    first = torch.randint(players, (games,), generator=generator)
    second = (first + torch.randint(1, players, (games,), generator=generator)) % players
    p = torch.sigmoid(strengths[first] - strengths[second])
    return Judgements(first, second, (torch.rand(games, generator=generator, dtype=torch.float64) < p).double())


def test_win_matrix_counts_ties_as_half():
    games = Judgements.of([(0, 1, 1.0), (1, 0, 1.0), (0, 1, 0.5), (2, 0, 0.0)])
    assert win_matrix(games, 3).tolist() == [[0.0, 1.5, 1.0], [1.5, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_two_players_by_hand():
    # 3 wins and 1 loss: the MLE of P(A ≻ B) is 3/4, so θ_A - θ_B = log 3
    theta = bradley_terry(win_matrix(Judgements.of([(0, 1, 1.0)] * 3 + [(0, 1, 0.0)]), 2), prior=0)
    assert (theta[0] - theta[1]).item() == pytest.approx(math.log(3), abs=1e-8)
    assert theta.sum().item() == pytest.approx(0, abs=1e-12)
    # two wins and two ties: 3 points to 1, the same strengths
    ties = bradley_terry(win_matrix(Judgements.of([(0, 1, 1.0)] * 2 + [(1, 0, 0.5)] * 2), 2), prior=0)
    assert torch.allclose(ties, theta)


def test_the_prior_keeps_an_unbeaten_player_finite_and_shrinks_little():
    unbeaten = win_matrix(Judgements.of([(0, 1, 1.0)] * 5), 2)
    with pytest.raises(ValueError):
        bradley_terry(unbeaten, prior=0)
    theta = bradley_terry(unbeaten, prior=1.0)
    assert torch.isfinite(theta).all() and theta[0] > theta[1]


def test_fit_recovers_known_strengths_from_2000_games():
    theta = bradley_terry(win_matrix(simulated_games(TRUE, 2000, seed=0), 4))
    assert (theta - TRUE).abs().max().item() < 0.15
    assert theta.argsort().tolist() == [0, 1, 2, 3]


def hunter_mm(wins: torch.Tensor, prior: float, iterations: int) -> torch.Tensor:
    """Hunter's (2004) MM step, the virtual player (π = 1) in the sums: the fixed point Newton must find."""
    games, points = wins + wins.T, wins.sum(-1) + prior / 2
    pi = torch.ones(len(wins), dtype=torch.float64)
    for _ in range(iterations):
        pi = points / ((games / (pi[:, None] + pi[None, :])).sum(-1) + prior / (pi + 1))
    return pi.log() - pi.log().mean()


def test_newton_agrees_with_hunters_mm():
    wins = win_matrix(simulated_games(TRUE, 200, seed=3), 4)
    assert torch.allclose(bradley_terry(wins, prior=2.0), hunter_mm(wins, 2.0, 20_000), atol=1e-8)


def test_batched_fits_equal_one_at_a_time():
    games = [simulated_games(TRUE, 300, seed) for seed in range(3)]
    wins = torch.stack([win_matrix(g, 4) for g in games])
    assert torch.allclose(bradley_terry(wins), torch.stack([bradley_terry(w) for w in wins]))


def test_anchor_on_a_player():
    theta = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    assert anchored(theta, 1).tolist() == pytest.approx([0.7, 0.0, 1.2])
    assert anchored(theta).sum().item() == pytest.approx(0, abs=1e-7)


def test_bootstrap_90_percent_intervals_cover_the_true_strengths():
    """20 data sets of 500 games x 4 players: about 90% of the 80 intervals should hold the true θ."""
    covered, widths = [], []
    for seed in range(20):
        games = simulated_games(TRUE, 500, seed)
        fits = bootstrap_strengths(games, 4, resamples=200, seed=seed)
        lower, upper = torch.quantile(fits, torch.tensor([0.05, 0.95], dtype=torch.float64), dim=0)
        covered += ((lower <= TRUE) & (upper >= TRUE)).tolist()
        widths += (upper - lower).tolist()
    assert 0.8 <= sum(covered) / len(covered) <= 0.98
    assert max(widths) < 0.8


def test_leaderboard_on_2000_games_covers_every_player():
    games = simulated_games(TRUE, 2000, seed=1)
    standings = leaderboard(["a", "b", "c", "d"], games, resamples=300, confidence=0.9, seed=0)
    assert [s.name for s in standings] == ["d", "c", "b", "a"]
    by_name = {s.name: s for s in standings}
    for name, true in zip("abcd", TRUE.tolist(), strict=True):
        s = by_name[name]
        assert s.lower <= true <= s.upper, (name, s)
        assert s.lower < s.strength < s.upper
    assert sum(s.games for s in standings) == 2 * 2000
    assert sum(s.points for s in standings) == pytest.approx(2000)
    row = by_name["d"].to_json()
    assert row["elo"] == pytest.approx(1000 + 400 / math.log(10) * row["strength"])
    assert row["elo_lower"] < row["elo"] < row["elo_upper"]


def test_elo_scale():
    # a 400-point gap is 10:1 odds
    assert 1 / (1 + 10 ** (-(elo(1.0) - elo(0.0)) / 400)) == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert elo(0) == 1000 and pytest.approx(173.7, abs=0.1) == ELO_SCALE
