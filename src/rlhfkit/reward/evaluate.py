"""Held-out evaluation of a reward model: pairwise accuracy, mean margin, loss and calibration.

Everything is measured on the raw head outputs: that is the scale on which the model was fitted so that
sigma(Δr) is its probability that a labeler prefers one reply, so that is the scale to calibrate. The
normalisation (a positive gain) changes neither which reply wins nor, for a single model, the accuracy.
"""

from __future__ import annotations

import torch

from rlhfkit.reward.data import Comparison
from rlhfkit.reward.losses import bradley_terry_loss
from rlhfkit.scores import expected_calibration_error


def pairwise_metrics(
    chosen: torch.Tensor, rejected: torch.Tensor, tie: torch.Tensor, bins: int = 10
) -> dict[str, float]:
    """accuracy and margin (mean r_c - r_r) over the strict pairs; loss (Bradley-Terry) and ece of sigma(Δr) over all.

    chosen, rejected: (N,) rewards, tie: (N,) bool. Calibration needs no orientation: each pair enters
    both ways round, (sigma(Δ), y) and (sigma(-Δ), 1 - y) with y = 1 (0.5 for a tie), else "chosen wins" would
    be the only outcome and every bin below 0.5 would be empty.
    """
    loss, metrics = bradley_terry_loss(chosen, rejected, tie=tie)
    prob = torch.sigmoid(chosen - rejected)
    outcome = torch.where(tie, 0.5, 1.0)
    ece = expected_calibration_error(torch.cat([prob, 1 - prob]), torch.cat([outcome, 1 - outcome]), bins)
    out = {"loss": loss.item(), "ece": ece.item(), "pairs": float((~tie).sum()), "ties": float(tie.sum())}
    out |= {name.removeprefix("rm/"): value.item() for name, value in metrics.items() if name != "rm/loss"}
    return out


def comparison_rewards(model, comparisons: list[Comparison]) -> list[torch.Tensor]:
    """The raw reward of each comparison's replies on its own head, each reply scored once: K-vectors."""
    prompts = [c.prompt for c in comparisons for _ in c.responses]
    responses = [r for c in comparisons for r in c.responses]
    raw = model.rewards(prompts, responses, normalized=False)  # (ΣK, H)
    out, start = [], 0
    for c in comparisons:
        out.append(raw[start : start + len(c.responses), c.head])
        start += len(c.responses)
    return out


def evaluate(model, comparisons: list[Comparison]) -> dict[str, float]:
    """`eval/{head}/{metric}` for every head with held-out comparisons (a RewardModel or RewardEnsemble)."""
    metrics: dict[str, float] = {}
    rewards = comparison_rewards(model, comparisons)
    for head, name in enumerate(model.head_names):
        pairs = [
            (r[i], r[j], tie)
            for c, r in zip(comparisons, rewards, strict=True)
            if c.head == head
            for i, j, tie in c.pairs()
        ]
        if pairs:
            chosen, rejected, tie = (torch.stack([torch.as_tensor(p[k]) for p in pairs]) for k in range(3))
            metrics |= {f"eval/{name}/{k}": v for k, v in pairwise_metrics(chosen, rejected, tie).items()}
    return metrics
