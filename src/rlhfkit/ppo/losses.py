"""The PPO and A2C objectives on (N,) tensors of response tokens (the real tokens of a minibatch, flattened).

Each function returns per-token losses (the trainer sums them and divides by the global token count) and
per-token statistics to log.
"""

from __future__ import annotations

import torch


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss (Schulman et al. 2017, arXiv:1707.06347, eq. 7):

        ρ_t = π(a_t|s_t) / π_old(a_t|s_t),     L_t = max(-A_t·ρ_t, -A_t·clip(ρ_t, 1-ε, 1+ε))

    Statistics: `clipped` (1 where the clipped term is the larger), `approx_kl` = (ρ - 1) - log ρ, the k3
    estimate of KL(π_old || π) between the rollout's policy and this one, and `ratio`.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    stats = {
        "clipped": (clipped > unclipped).float().detach(),
        "approx_kl": (torch.expm1(log_ratio) - log_ratio).detach(),
        "ratio": ratio.detach(),
    }
    return torch.maximum(unclipped, clipped), stats


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
