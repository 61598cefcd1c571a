"""Reward-model losses and evaluation metrics on hand-computed tensors."""

import math

import pytest
import torch

from rlhfkit.reward.evaluate import pairwise_metrics
from rlhfkit.reward.losses import bradley_terry_loss, ranking_loss
from rlhfkit.scores import expected_calibration_error


def nll(delta: float) -> float:
    """-log sigma(Δ), by hand."""
    return math.log1p(math.exp(-delta))


def test_bradley_terry_with_margin_and_tie_by_hand():
    chosen = torch.tensor([2.0, 0.0, 1.0])
    rejected = torch.tensor([1.0, 1.0, 1.0])
    margin = torch.tensor([0.5, 0.0, 3.0])  # the tie's margin is ignored
    tie = torch.tensor([False, False, True])
    loss, metrics = bradley_terry_loss(chosen, rejected, margin, tie)
    # -log sigma(1 - 0.5); -log sigma(-1); tie at Δ = 0: -½ log sigma(0) - ½ log sigma(0) = log 2
    expected = (nll(0.5) + nll(-1.0) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["rm/accuracy"].item() == 0.5  # strict pairs only: one right, one wrong
    assert metrics["rm/margin"].item() == pytest.approx(0.0)  # (1 + (-1)) / 2
    assert metrics["rm/loss"].item() == pytest.approx(expected, rel=1e-6)


def test_tie_loss_is_smallest_at_equal_rewards():
    deltas = torch.linspace(-2, 2, 9)
    losses = [bradley_terry_loss(d[None], torch.zeros(1), tie=torch.tensor([True]))[0].item() for d in deltas]
    assert min(losses) == pytest.approx(math.log(2)) and losses.index(min(losses)) == 4
    assert losses[0] == pytest.approx(losses[-1])  # symmetric: a tie has no direction


def test_k_ranking_loss_is_the_mean_of_its_pairwise_losses():
    rewards = torch.tensor([[0.5, 1.0, -1.0, 0.2]])
    ranks = torch.tensor([[2, 1, 4, 3]])  # best to worst: 1, 0, 3, 2
    loss, metrics = ranking_loss(rewards, ranks, torch.ones(1, 4, dtype=torch.bool))
    order = [1, 0, 3, 2]
    pairs = [(order[a], order[b]) for a in range(4) for b in range(a + 1, 4)]
    by_hand = sum(nll(rewards[0, w].item() - rewards[0, lose].item()) for w, lose in pairs) / 6
    chosen = torch.stack([rewards[0, w] for w, _ in pairs])
    rejected = torch.stack([rewards[0, lose] for _, lose in pairs])
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert loss.item() == pytest.approx(bradley_terry_loss(chosen, rejected)[0].item(), rel=1e-6)
    # Δ over the six pairs (1,0) (1,3) (1,2) (0,3) (0,2) (3,2): 0.5, 0.8, 2.0, 0.3, 1.5, 1.2, all positive
    assert metrics["rm/accuracy"].item() == 1.0
    assert metrics["rm/margin"].item() == pytest.approx((0.5 + 0.8 + 2.0 + 0.3 + 1.5 + 1.2) / 6, rel=1e-6)


def test_ranking_loss_counts_each_prompt_once_not_each_pair():
    # Prompt 0 ranks 3 replies (3 pairs), prompt 1 ranks 2 (1 pair, the third slot is padding).
    rewards = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 99.0]])
    ranks = torch.tensor([[1, 2, 3], [1, 2, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = ranking_loss(rewards, ranks, mask)
    prompt0 = (nll(1.0) + nll(2.0) + nll(1.0)) / 3
    prompt1 = nll(-2.0)
    assert loss.item() == pytest.approx((prompt0 + prompt1) / 2, rel=1e-6)
    pooled = (nll(1.0) + nll(2.0) + nll(1.0) + nll(-2.0)) / 4  # what K-choose-2 separate rows would give
    assert loss.item() != pytest.approx(pooled, rel=1e-3)


def test_ranking_of_two_is_bradley_terry_with_ties_and_margins():
    chosen, rejected = torch.tensor([0.3, -0.2, 1.0]), torch.tensor([0.1, 0.4, 1.5])
    margin, tie = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([False, False, True])
    rewards = torch.stack([chosen, rejected], dim=1)
    ranks = torch.tensor([[1, 2], [1, 2], [1, 1]])
    loss, metrics = ranking_loss(rewards, ranks, torch.ones(3, 2, dtype=torch.bool), margin)
    bt, bt_metrics = bradley_terry_loss(chosen, rejected, margin, tie)
    assert loss.item() == pytest.approx(bt.item(), rel=1e-6)
    assert metrics["rm/accuracy"].item() == bt_metrics["rm/accuracy"].item() == 0.5


def test_ranking_ties_take_a_half_target():
    rewards = torch.tensor([[0.0, 1.0, -0.5]])
    ranks = torch.tensor([[1, 1, 2]])  # replies 0 and 1 tie, both beat reply 2
    loss, _ = ranking_loss(rewards, ranks, torch.ones(1, 3, dtype=torch.bool))
    tie = 0.5 * nll(-1.0) + 0.5 * nll(1.0)  # Δ_01 = -1 with target ½
    assert loss.item() == pytest.approx((tie + nll(0.5) + nll(1.5)) / 3, rel=1e-6)


def test_ranking_loss_gradient_flows_to_every_reply():
    rewards = torch.tensor([[0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    loss, _ = ranking_loss(rewards, torch.tensor([[1, 2, 3, 4]]), torch.ones(1, 4, dtype=torch.bool))
    loss.backward()
    grad = rewards.grad[0]
    assert grad[0] < 0 < grad[3]  # the best reply is pushed up, the worst down
    assert grad.sum().item() == pytest.approx(0.0, abs=1e-7)  # only differences matter


def test_expected_calibration_error_by_hand():
    prob = torch.tensor([0.95, 0.05, 0.65, 0.35, 0.25, 0.75])
    outcome = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    # One prediction per bin: |1 - .95|, |0 - .05|, |1 - .65|, |0 - .35|, |1 - .25|, |0 - .75|, each weight 1/6
    assert expected_calibration_error(prob, outcome).item() == pytest.approx((0.1 + 0.7 + 1.5) / 6, rel=1e-6)
    both_in_one_bin = expected_calibration_error(torch.tensor([0.62, 0.68]), torch.tensor([1.0, 0.0]))
    assert both_in_one_bin.item() == pytest.approx(abs(0.5 - 0.65), rel=1e-6)


def test_pairwise_metrics_are_symmetric_and_count_strict_pairs():
    delta = torch.tensor([math.log(0.85 / 0.15), math.log(0.62 / 0.38), -math.log(0.73 / 0.27), 0.0])
    tie = torch.tensor([False, False, False, True])
    metrics = pairwise_metrics(delta, torch.zeros(4), tie)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["margin"] == pytest.approx(delta[:3].mean().item(), rel=1e-6)
    assert metrics["pairs"] == 3 and metrics["ties"] == 1
    # Both orientations of every pair, one per bin but the tie's two (.5, .5), which are calibrated:
    # (.85, 1) (.15, 0) (.62, 1) (.38, 0) (.27, 1) (.73, 0) (.5, .5) (.5, .5)
    assert metrics["ece"] == pytest.approx((0.15 + 0.15 + 0.38 + 0.38 + 0.73 + 0.73) / 8, rel=1e-5)
