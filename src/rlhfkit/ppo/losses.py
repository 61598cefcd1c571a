"""The PPO and A2C objectives on (N,) tensors of response tokens (the real tokens of a minibatch, flattened).

Each function returns per-token losses and per-token statistics to log; the trainer weighs the token losses
and divides their sum over the global minibatch as `loss_normaliser` says (token, sequence or constant mean).
"""

from __future__ import annotations

from typing import Literal

import torch


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float, clip_high: float | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss (Schulman et al. 2017, arXiv:1707.06347, eq. 7), from the log-ratio
    log ρ_t = log π(a_t|s_t) - log π_old(a_t|s_t) (per token, or GSPO's `sequence_log_ratio`):

        L_t = max(-A_t·ρ_t, -A_t·clip(ρ_t, 1 - ε_low, 1 + ε_high))

    ε_low = `clip`; ε_high = `clip_high` (None: `clip`); a larger ε_high is DAPO's "clip-higher" (Yu et al.
    2025, arXiv:2503.14476, eq. 10: more room to raise unlikely tokens, against entropy collapse).
    Statistics: `clipped` (1 where the clipped term is the larger), `approx_kl` = (ρ - 1) - log ρ, the k3
    estimate of KL(π_old || π) between the rollout's policy and this one, and `ratio`.
    """
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + (clip if clip_high is None else clip_high))
    stats = {
        "clipped": (clipped > unclipped).float().detach(),
        "approx_kl": (torch.expm1(log_ratio) - log_ratio).detach(),
        "ratio": ratio.detach(),
    }
    return torch.maximum(unclipped, clipped), stats


def sequence_log_ratio(log_ratio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence-level importance ratio (Zheng et al. 2025, arXiv:2507.18071, eqs. 7 and 13, GSPO-token),
    for the flattened tokens (N,) of rows `lengths` (b,) long:

        log s_i = 1/|y_i| · Σ_t log ρ_i,t,        log s_i,t = sg[log s_i] + log π(y_i,t) - sg[log π(y_i,t)]

    Every token of row i has the value s_i (clipping it clips the sequence) and the gradient s_i·∇log π(y_i,t):
    with `sequence_mean` aggregation, exactly GSPO's sequence objective.
    """
    row = torch.repeat_interleave(torch.arange(len(lengths), device=log_ratio.device), lengths.to(log_ratio.device))
    sums = log_ratio.new_zeros(len(lengths)).index_add(0, row, log_ratio.detach())
    return (sums / lengths.to(log_ratio.device).clamp(min=1))[row] + log_ratio - log_ratio.detach()


LossAggregation = Literal["token_mean", "sequence_mean", "constant"]


def loss_normaliser(lengths: torch.Tensor, aggregation: LossAggregation, max_length: int) -> tuple[torch.Tensor, float]:
    """How the per-token losses of rows `lengths` (b,) long become one loss: (weight of each row's token
    losses (b,), number of items the weighted sum is a mean over). Summed over processes and micro-batches
    (`training.reduction.GlobalMean`), Σ weight·loss / items gives, over the global minibatch,

        token_mean      Σ_i Σ_t l_i,t / Σ_i |y_i|           (DAPO: Yu et al. 2025, arXiv:2503.14476, eq. 8)
        sequence_mean   1/n · Σ_i 1/|y_i| · Σ_t l_i,t        (the original GRPO: Shao et al. 2024, eq. 3)
        constant        1/n · Σ_i Σ_t l_i,t / L_max          (Dr.GRPO: Liu et al. 2025, arXiv:2503.20783: no
                                                              length bias; L_max = max_new_tokens)
    """
    lengths = lengths.float()
    if aggregation == "token_mean":
        return torch.ones_like(lengths), float(lengths.sum())
    if aggregation == "sequence_mean":
        return 1 / lengths.clamp(min=1), float(len(lengths))
    if aggregation == "constant":
        return torch.ones_like(lengths), float(len(lengths) * max_length)
    raise ValueError(f"unknown loss aggregation {aggregation!r}")


def policy_gradient(logprobs: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The advantage actor-critic policy loss L_t = -A_t·log π(a_t|s_t) (Mnih et al. 2016, arXiv:1602.01783),
    with no ratio and no clipping: one pass over fresh samples. (DeepMind's Sparrow and GopherCite used A2C
    for their RL stage.)"""
    return -advantages * logprobs, {}


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½·max((V - R)², (V_clip - R)²) with V_clip = V_old + clip(V - V_old, -ε_v, ε_v): the value update may
    not move a prediction more than ε_v from the rollout's (the PPO baselines; Ziegler et al. 2019).
    clip None: the plain squared error ½(V - R)², as A2C uses. `clipped`: 1 where the clipped term wins."""
    unclipped = (values - returns).square()
    if clip is None:
        return 0.5 * unclipped, {}
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns).square()
    return 0.5 * torch.maximum(unclipped, clipped), {"clipped": (clipped > unclipped).float().detach()}


def truncated_importance_weight(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """min(π_old(a_t|s_t) / π_engine(a_t|s_t), C) per token, no gradient: truncated importance sampling (Yao et
    al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"). Tokens come from the
    rollout engine's numerics (π_engine) while the update assumes the trainer's (π_old); the weight corrects
    the policy-gradient term for that gap, and the cap C bounds its variance."""
    return (logprobs - engine_logprobs).exp().clamp(max=cap).detach()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - Σ_v softmax(z)_v·z_v per row of logits (N, V) -> (N,), in nats."""
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1)
