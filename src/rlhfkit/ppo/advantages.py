"""From a rollout to advantages: the KL estimators, per-token rewards, GAE and whitening, on (B, T) tensors.

T counts response tokens; `mask` is 1 on real response tokens (through EOS) and 0 on the padding after.
Every function is pure: no model, no state.
"""

from __future__ import annotations

from typing import Literal

import torch

from rlhfkit.ops import last_index

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from tokens sampled from π (Schulman 2020, "Approximating KL
    divergence"), with log r = log π_ref(y_t) - log π(y_t):

        k1 = -log r                 unbiased, can be negative, high variance
        k2 = (log r)² / 2           biased, always ≥ 0, low variance
        k3 = (r - 1) - log r        unbiased, always ≥ 0, low variance
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return log_ratio.square() / 2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor) -> torch.Tensor:
    """r_t = -β·KL_t on every response token, plus the sequence score on its last real token:

        r_t = -β·KL_t + [t = last]·s

    (Ziegler et al. 2019, arXiv:1909.08593, eq. 2; Ouyang et al. 2022, arXiv:2203.02155, eq. 2.)
    scores: (B,), kl and mask: (B, T) -> (B, T), zero on padding.
    """
    rewards = -beta * kl * mask
    last = last_index(mask)
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    bootstrap: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438, eq. 16):

        δ_t = r_t + γ·V(s_t+1) - V(s_t),     A_t = δ_t + γλ·A_t+1,     returns R_t = A_t + V(s_t)

    The state after a row's last real token is terminal (V = 0), unless `bootstrap` (B,) gives its value,
    for episodes cut off rather than ended. Padding positions are skipped (they neither receive nor pass on
    anything) and get advantage and return 0. Returns (advantages, returns), both (B, T).
    """
    batch, steps = rewards.shape
    next_value = torch.zeros(batch, dtype=values.dtype) if bootstrap is None else bootstrap.to(values.dtype)
    next_advantage = torch.zeros(batch, dtype=values.dtype)
    advantages = torch.zeros_like(values)
    for t in reversed(range(steps)):
        real = mask[:, t].bool()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(real, advantage, 0.0)
        next_value = torch.where(real, values[:, t], next_value)
        next_advantage = torch.where(real, advantage, next_advantage)
    return advantages, (advantages + values) * mask


def masked_moments(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(Σ m·x, Σ m·x², Σ m) as one tensor of 3, so the moments of several processes' shards add up."""
    m = mask.to(values.dtype)
    return torch.stack([(values * m).sum(), (values.square() * m).sum(), m.sum()])


def whiten(
    values: torch.Tensor, mask: torch.Tensor, moments: torch.Tensor | None = None, shift_mean: bool = True
) -> torch.Tensor:
    """(x - mean) / std over the masked positions, 0 on the others: advantage normalisation (e.g. the
    PPO baselines and Ziegler et al. 2019). `moments` from `masked_moments` (summed over processes, for a
    whole-batch mean and std); by default those of `values`. std is the population one, plus 1e-8 under √.
    With shift_mean=False the mean is added back: the scale changes, the sign of each value does not.
    """
    total, total_sq, count = masked_moments(values, mask) if moments is None else moments
    mean = total / count.clamp(min=1)
    var = (total_sq / count.clamp(min=1) - mean.square()).clamp(min=0)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


MOMENT_KEYS = ("value/returns", "value/returns_sq", "value/residual", "value/residual_sq")


def explained_variance(mean_r: float, mean_r_sq: float, mean_d: float, mean_d_sq: float) -> float:
    """1 - Var[R - V] / Var[R] from the first two moments of the returns R and the residuals d = R - V
    (means over real tokens, so shards of a batch combine): 1 = the critic predicts the returns, ≤ 0 = no
    better than a constant."""
    var_returns = mean_r_sq - mean_r**2
    var_residual = mean_d_sq - mean_d**2
    return 1 - var_residual / max(var_returns, 1e-8)
