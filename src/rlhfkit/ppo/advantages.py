"""From a rollout to advantages: the KL estimators, per-token rewards, GAE and whitening, on (B, T) tensors,
and the critic-free estimators (GRPO, RLOO, REINFORCE++) that `ESTIMATORS` chooses between by `algo`.

T counts response tokens; `mask` is 1 on real response tokens (through EOS) and 0 on the padding after.
Group estimators read a global batch whose rows g·G ... g·G + G - 1 are the G samples of one prompt.
Every function is pure: no model, no state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from rlhfkit.ops import last_index

KLEstimator = Literal["k1", "k2", "k3"]
Algo = Literal["ppo", "a2c", "grpo", "rloo", "reinforce_pp"]


@dataclass(frozen=True)
class Estimator:
    """How an `algo` turns rewards into advantages."""

    function: Literal["gae", "grpo", "rloo", "reinforce_pp"]  # of this module
    critic: bool  # needs a value model; the critic-free ones build and train none
    grouped: bool  # compares the G ≥ 2 samples of each prompt


ESTIMATORS: dict[str, Estimator] = {
    "ppo": Estimator("gae", critic=True, grouped=False),  # Schulman et al. 2017; clipped surrogate, epochs
    "a2c": Estimator("gae", critic=True, grouped=False),  # Mnih et al. 2016; one plain policy-gradient pass
    "grpo": Estimator("grpo", critic=False, grouped=True),  # Shao et al. 2024
    "rloo": Estimator("rloo", critic=False, grouped=True),  # Ahmadian et al. 2024
    "reinforce_pp": Estimator("reinforce_pp", critic=False, grouped=False),  # Hu 2025
}


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


def grpo(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages of outcome rewards (GRPO: Shao et al. 2024, DeepSeekMath, arXiv:2402.03300,
    section 4.1.2): each of the G samples of a prompt gets, on every one of its tokens,

        A_i = (r_i - mean_g r) / (std_g r + ε)

    with the sample std (n - 1, as TRL and OpenRLHF compute it). scale=False drops the division (Dr.GRPO: Liu
    et al. 2025, arXiv:2503.20783, section 3.1: the std weights prompts of low reward spread up).
    rewards: (B,), B a multiple of G -> (B,).
    """
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        centred = centred / (groups.std(1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline (RLOO: Ahmadian et al. 2024, arXiv:2402.14740, eq. 6; Kool
    et al. 2019): each sample's baseline is the mean reward of the other G - 1 samples of its prompt,

        A_i = r_i - 1/(G-1) · Σ_{j≠i} r_j        (= G/(G-1) · (r_i - mean_g r))

    rewards: (B,), B a multiple of G -> (B,).
    """
    groups = rewards.view(-1, group_size)
    baseline = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def reinforce_pp(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    total: Callable[[torch.Tensor], torch.Tensor] = lambda moments: moments,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262, section 3): the per-token rewards r_t of `token_rewards`
    (score on the last token, -β·KL_t on each), their return with no critic, normalised over the global batch:

        G_t = Σ_{s≥t} γ^(s-t)·r_s,     A_t = (G_t - mean G) / std G

    `total` sums `masked_moments` over processes (identity: one process), so the mean and std are the global
    batch's. Returns (advantages, returns), both (B, T).
    """
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0)  # V = 0, λ = 1: the return
    return whiten(returns, mask, total(masked_moments(returns, mask))), returns


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13), added to the score:

        0                                   |y| ≤ L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache   L_max - L_cache < |y| ≤ L_max     (down to -1 at L_max)

    with L_max = max_new_tokens (responses are cut there) and L_cache = `buffer`. lengths: (B,) -> (B,).
    """
    return ((max_length - buffer - lengths.float()) / buffer).clamp(min=-1.0, max=0.0)


def informative_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) bool: False on the rows of groups whose G scores are all equal (every group-relative advantage
    0): what DAPO's dynamic sampling drops (Yu et al. 2025, arXiv:2503.14476, eq. 11)."""
    groups = scores.view(-1, group_size)
    return (groups.amax(1) > groups.amin(1)).repeat_interleave(group_size)


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
