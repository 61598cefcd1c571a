"""The reward model of deep RL from human preferences: an ensemble of small MLPs r̂_k(o, a) fitted to comparisons.

Christiano et al. 2017 (arXiv:1706.03741), section 2.2.3 and appendix A.1 (MuJoCo):
- each member sees (observation, action) and has two hidden layers of 64 units with leaky ReLUs;
- a segment's predicted return is Σ_t r̂(o_t, a_t), compared through Bradley-Terry with a 10% chance that the
  labeler answered at random (`segment_pair_loss`);
- each member trains on |D| comparisons drawn with replacement (a bootstrap), a fraction 1/e is held out,
  and the L2 weight is adapted so the validation loss stays 1.1-1.5 times the training loss (`adapt_l2`);
- the reward given to the agent is each member normalised to a fixed scale, averaged.

One addition for environments that end episodes by termination (CartPole, Hopper, Walker2d): after the
termination a segment is padded with an absorbing "ended" state whose reward is one learned scalar per member
(`end_reward`). The agent's reward is then shifted so that this state is worth 0, which is what a PPO value
target assumes at termination; the paper removed such terminations from its environments instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlhfkit.control.segments import Comparisons, Segments


def segment_pair_loss(
    returns_first: torch.Tensor, returns_second: torch.Tensor, target: torch.Tensor, random_prob: float = 0.1
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the labels under the noisy Bradley-Terry model of Christiano et al. 2017 (eq. 1, 2.2.3):

        P̂[σ¹ ≻ σ²] = (1 - ε)·sigma(Σ r̂(σ¹) - Σ r̂(σ²)) + ε/2
        loss = -[y·log P̂[σ¹ ≻ σ²] + (1 - y)·log P̂[σ² ≻ σ¹]]

    returns_*: (..., B) predicted segment returns (a leading member axis K allowed); target y: (B,) or the same
    shape, 1 when the first segment is preferred, 0.5 for a tie. ε = random_prob; at ε = 0 this is
    `rlhfkit.reward.losses.pairwise_logistic`. The loss is the mean over pairs, summed over any leading axes
    (each member of an ensemble gets the gradient of its own mean loss); rm/loss is the mean per member.
    Computed in log space (log-sum-exp of the two mixture terms), stable for any margin.
    """
    delta = returns_first - returns_second
    log_informed = math.log1p(-random_prob)
    log_random = math.log(random_prob / 2) if random_prob > 0 else -math.inf
    log_first = torch.logaddexp(F.logsigmoid(delta) + log_informed, torch.tensor(log_random))
    log_second = torch.logaddexp(F.logsigmoid(-delta) + log_informed, torch.tensor(log_random))
    per_pair = -(target * log_first + (1 - target) * log_second)
    loss = per_pair.mean(-1).sum()
    strict = (target != 0.5).expand_as(delta)
    correct = (delta > 0) == (target > 0.5).expand_as(delta)
    metrics = {"rm/loss": per_pair.detach().mean()}
    if strict.any():
        metrics["rm/accuracy"] = correct[strict].float().mean()
    return loss, metrics


def adapt_l2(l2: float, train_loss: float, validation_loss: float, low: float = 1.1, high: float = 1.5) -> float:
    """The L2 weight for the next fit: ×1.5 when validation loss > high × training loss (overfitting), ÷1.5
    when it is below low × training loss, else unchanged (Christiano et al. 2017, appendix A.1)."""
    ratio = validation_loss / max(train_loss, 1e-8)
    if ratio > high:
        return l2 * 1.5
    if ratio < low:
        return l2 / 1.5
    return l2


class EnsembleLinear(nn.Module):
    """K independent linear layers applied in one batched matmul: (K, ..., n_in) -> (K, ..., n_out)."""

    def __init__(self, members: int, n_in: int, n_out: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(n_in)  # nn.Linear's default initialisation, per member
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (K, M, n_in)
        return torch.baddbmm(self.bias, flat, self.weight).reshape(*x.shape[:-1], -1)


class RewardEnsemble(nn.Module):
    """K reward predictors r̂_k(o, a), inputs standardised by statistics of the labelled segments."""

    input_mean: torch.Tensor  # buffers, see __init__
    input_std: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, obs_dim: int, act_dim: int, members: int = 3, hidden: int = 64) -> None:
        super().__init__()
        n_in = obs_dim + act_dim
        self.layers = nn.ModuleList([EnsembleLinear(members, n_in, hidden), EnsembleLinear(members, hidden, hidden)])
        self.head = EnsembleLinear(members, hidden, 1)
        self.end_reward = nn.Parameter(torch.zeros(members))  # r̂ of the absorbing state after a termination
        self.register_buffer("input_mean", torch.zeros(n_in))
        self.register_buffer("input_std", torch.ones(n_in))
        self.register_buffer("offset", torch.zeros(members))  # the agent's reward: (r̂_k - offset_k) / scale_k
        self.register_buffer("scale", torch.ones(members))

    @property
    def members(self) -> int:
        return self.end_reward.shape[0]

    def member_rewards(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """r̂_k(o, a) from per-member inputs: obs (K, ..., d_obs), actions (K, ..., d_act) -> (K, ...)."""
        x = (torch.cat([obs, actions], -1) - self.input_mean) / self.input_std
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.01)
        return self.head(x).squeeze(-1)

    def segment_returns(self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Σ_t r̂_k over each segment, the padding after a termination worth end_reward_k per step.

        Per-member inputs obs (K, N, L, d_obs), actions (K, N, L, d_act), mask (K, N, L) -> (K, N).
        """
        rewards = self.member_rewards(obs, actions)
        return torch.where(mask, rewards, self.end_reward[:, None, None]).sum(-1)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same inputs for every member: (...) -> (K, ...) (a view, no copy)."""
        return x.expand(self.members, *x.shape)

    @torch.no_grad()
    def reward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The agent's reward: mean_k (r̂_k - offset_k) / scale_k; obs (..., d_obs), actions (..., d_act) -> (...)."""
        rewards = self.member_rewards(self.shared(obs), self.shared(actions))
        shape = (-1,) + (1,) * (rewards.dim() - 1)
        return ((rewards - self.offset.view(shape)) / self.scale.view(shape)).mean(0)

    @torch.no_grad()
    def set_input_statistics(self, segments: Segments) -> None:
        """Standardise the inputs with the mean and std of the real (unpadded) steps of these segments."""
        x = torch.from_numpy(np.concatenate([segments.obs, segments.actions], -1)[segments.mask]).float()
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(x.std(0).clamp(min=1e-3))

    @torch.no_grad()
    def set_normalisation(self, obs: torch.Tensor, actions: torch.Tensor, seen_termination: bool) -> None:
        """Offset: the ended state's reward where the labels have seen terminations (dying is then worth 0), else
        the mean over these steps (M, d). Scale: the root mean square of r̂_k - offset_k over them, so the agent's
        reward has unit size: the paper's zero mean and unit std without terminations, and with them a reward
        per step of about 1 rather than a survival bonus many stds large."""
        rewards = self.member_rewards(self.shared(obs), self.shared(actions))  # (K, M)
        self.offset.copy_(self.end_reward if seen_termination else rewards.mean(1))
        self.scale.copy_((rewards - self.offset[:, None]).pow(2).mean(1).sqrt().clamp(min=1e-6))

    def l2_penalty(self) -> torch.Tensor:
        """Σ ||W||² over the weight matrices (not biases), summed over members."""
        return sum((layer.weight**2).sum() for layer in (*self.layers, self.head))


def segment_tensors(segments: Segments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(obs, actions, mask) of segments as float32/bool tensors."""
    return (
        torch.from_numpy(segments.obs).float(),
        torch.from_numpy(segments.actions).float(),
        torch.from_numpy(segments.mask),
    )


def predicted_returns(model: RewardEnsemble, segments: Segments) -> torch.Tensor:
    """Each member's predicted return of each segment: (K, N)."""
    with torch.no_grad():
        return model.segment_returns(*(model.shared(t) for t in segment_tensors(segments)))


def preference_probabilities(model: RewardEnsemble, first: Segments, second: Segments) -> torch.Tensor:
    """Each member's sigma(Σ r̂(σ¹) - Σ r̂(σ²)) for each pair: (K, P), the noise-free part of eq. 1."""
    return torch.sigmoid(predicted_returns(model, first) - predicted_returns(model, second))


def evaluate(model: RewardEnsemble, comparisons: Comparisons, random_prob: float) -> dict[str, float]:
    """rm/loss and rm/accuracy (strict pairs) of every member on these comparisons, averaged over members."""
    target = torch.from_numpy(comparisons.labels).float()
    _, metrics = segment_pair_loss(
        predicted_returns(model, comparisons.pairs.first),
        predicted_returns(model, comparisons.pairs.second),
        target,
        random_prob,
    )
    return {key: float(value) for key, value in metrics.items()}


def fit(
    model: RewardEnsemble,
    comparisons: Comparisons,
    *,
    l2: float,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    random_prob: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Train every member on its own bootstrap resample of the training split (warm-started from the last fit).

    Each member draws |D_train| comparisons with replacement (Christiano et al. 2017, section 2.2.3) and runs
    `epochs` passes over them in minibatches of `batch_size`, all members in one batched forward; the loss is
    `segment_pair_loss` + l2·Σ||W||². Returns rm/train_loss, rm/train_accuracy, and rm/val_loss,
    rm/val_accuracy on the held-out split when it has any comparisons.
    """
    train = comparisons[np.flatnonzero(~comparisons.validation)]
    model.set_input_statistics(Segments.concat([comparisons.pairs.first, comparisons.pairs.second]))
    first, second = segment_tensors(train.pairs.first), segment_tensors(train.pairs.second)
    target = torch.from_numpy(train.labels).float()
    n = len(train)
    bootstrap = rng.integers(n, size=(model.members, n))  # (K, n): each member's resample
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    for _ in range(epochs):
        order = np.take_along_axis(bootstrap, rng.random(bootstrap.shape).argsort(1), 1)
        for start in range(0, n, batch_size):
            index = torch.from_numpy(order[:, start : start + batch_size])  # (K, B)
            returns_first = model.segment_returns(*(t[index] for t in first))
            returns_second = model.segment_returns(*(t[index] for t in second))
            loss, _ = segment_pair_loss(returns_first, returns_second, target[index], random_prob)
            optimizer.zero_grad()
            (loss + l2 * model.l2_penalty()).backward()
            optimizer.step()
    metrics = {f"rm/train_{key[3:]}": value for key, value in evaluate(model, train, random_prob).items()}
    if comparisons.validation.any():
        held_out = comparisons[np.flatnonzero(comparisons.validation)]
        metrics |= {f"rm/val_{key[3:]}": value for key, value in evaluate(model, held_out, random_prob).items()}
    return metrics
