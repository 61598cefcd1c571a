"""Reward-model losses: pure functions of rewards that return (loss, metrics).

All of them fit the Bradley-Terry model of a labeler's choice (Bradley & Terry 1952), in the form
Christiano et al. 2017 (arXiv:1706.03741, eq. 1), Stiennon et al. 2020 (arXiv:2009.01325, eq. 1) and
InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, eq. 1) use:

    P(y_w ≻ y_l | x) = sigma(r(x, y_w) - r(x, y_l))

Metric keys are namespaced `rm/...`; values are detached 0-dim tensors, averaged by the trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_logistic(delta: torch.Tensor, target: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """loss = -[y·log sigma(Δ - m) + (1 - y)·log sigma(-(Δ - m))], elementwise over any shape.

    Δ = r_first - r_second; y = 1 when the first reply is preferred and 0.5 for a tie (the loss is then
    smallest at Δ = m, which is why ties take m = 0); m is the margin the preferred reply must win by
    (Touvron et al. 2023, Llama 2, arXiv:2307.09288, eq. 2). Computed as a logits-BCE, stable for any Δ.
    """
    return F.binary_cross_entropy_with_logits(delta - margin, target, reduction="none")


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    tie: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over N pairs of -log sigma(r_c - r_r - m); a tie has target 0.5 and no margin.

    chosen, rejected: (N,) rewards; margin: (N,) or None; tie: (N,) bool or None. Accuracy and the mean
    margin r_c - r_r are over the strict (non-tie) pairs; a pair whose rewards are equal counts as wrong.
    """
    tie = torch.zeros_like(chosen, dtype=torch.bool) if tie is None else tie
    delta = chosen - rejected  # (N,)
    target = torch.where(tie, 0.5, 1.0).to(delta.dtype)
    m = torch.zeros_like(delta) if margin is None else margin.to(delta.dtype).masked_fill(tie, 0.0)
    loss = pairwise_logistic(delta, target, m).mean()
    return loss, _metrics(loss, delta[~tie])


def ranking_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InstructGPT's K-way ranking loss (Ouyang et al. 2022, eq. 1), one batch element per prompt:

        loss = -1/C(K,2) · Σ_{(y_w, y_l)} log sigma(r(x, y_w) - r(x, y_l)),  averaged over the P prompts.

    rewards: (P, K) the reward of each prompt's K replies, each forwarded once; ranks: (P, K) int, 1 is
    best and equal ranks are ties (target 0.5, as in `bradley_terry_loss`); mask: (P, K) bool, False for
    the padding of prompts with fewer than K replies; margin: (P,) or None, applied to every strict pair
    of the prompt. Every unordered pair of real replies enters once, so C(K,2) = the prompt's pair count.
    A pair is a ranking of two, and then this is exactly the Bradley-Terry loss.
    """
    delta = rewards[:, :, None] - rewards[:, None, :]  # (P, K, K): Δ_ij = r_i - r_j
    real = mask[:, :, None] & mask[:, None, :]
    better = (ranks[:, :, None] < ranks[:, None, :]) & real  # i ranked above j: the ordered pair (i ≻ j)
    k = rewards.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=rewards.device).triu(1)
    tie = (ranks[:, :, None] == ranks[:, None, :]) & real & upper  # each tied pair once, as (i, j) with i < j
    pairs = better | tie
    target = torch.where(better, 1.0, 0.5).to(delta.dtype)
    m = torch.zeros_like(delta) if margin is None else margin.to(delta.dtype)[:, None, None] * better
    per_pair = pairwise_logistic(delta, target, m) * pairs  # (P, K, K), zero outside the pairs
    per_prompt = per_pair.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)  # (P,): mean over the prompt's pairs
    loss = per_prompt.mean()
    return loss, _metrics(loss, delta[better])


def _metrics(loss: torch.Tensor, strict_delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """rm/loss, and over the strict pairs: rm/accuracy (Δ > 0) and rm/margin (mean Δ)."""
    strict_delta = strict_delta.detach()
    metrics = {"rm/loss": loss.detach()}
    if strict_delta.numel():
        metrics["rm/accuracy"] = (strict_delta > 0).float().mean()
        metrics["rm/margin"] = strict_delta.float().mean()
    return metrics
