"""ILQL's losses (Snell et al. 2022, arXiv:2206.11871, §4) and the AWR baseline's weights, as pure functions.

Notation: a reply is a sequence of actions a_t (its tokens, EOS included) taken in states s_t (the prompt and
the tokens before a_t); the reward R of the whole reply arrives after its last action (sparse reward).
Tensors are laid out like the LM's shifted targets: position t holds the state s_t that predicts token t+1.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from rlhfkit.ops import last_index


def bellman_targets(values: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """y_t = r_t + γ·(1 - done_t)·V(s_{t+1}), with r_t = R·done_t: (B, T), (B, T) bool, (B,) -> (B, T).

    `values[:, t]` is V(s_t), `actions` marks the positions whose next token is an action (the reply's);
    the last action of a row is terminal (done), its target is R; the others bootstrap from the value of
    the next state. Positions that are not actions get 0. Pass detached values: the target is fixed.
    """
    next_values = torch.cat([values[:, 1:], values.new_zeros(values.shape[0], 1)], dim=1)
    positions = torch.arange(values.shape[1], device=values.device)
    done = (positions == last_index(actions)[:, None]) & actions
    targets = torch.where(done, rewards[:, None].to(values.dtype), gamma * next_values)
    return targets * actions


def q_loss(q_taken: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q(s_t, a_t) - y_t)² per action: the Bellman (TD) regression of one Q head, (N,), (N,) -> (N,)."""
    return (q_taken - targets) ** 2


def expectile_loss(q_taken: torch.Tensor, values: torch.Tensor, tau: float) -> torch.Tensor:
    """L₂^τ(u) = |τ - 1(u < 0)|·u², u = Q̂(s_t, a_t) - V(s_t), per action: (N,), (N,) -> (N,).

    Expectile regression: τ = 0.5 is the mean of Q̂ over the data's actions; τ → 1 approaches their maximum,
    so V estimates the value of the best in-distribution action without querying unseen ones (IQL)."""
    u = q_taken - values
    return torch.where(u < 0, 1 - tau, tau) * u**2


def cql_loss(q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """-log softmax(Q(s_t, ·))[a_t] per action: (N, V), (N,) -> (N,).

    Conservative Q-learning's regulariser in ILQL's form: the cross-entropy of Q over the vocabulary
    toward the token the data took, pushing down Q of tokens the dataset never took in that state."""
    return F.cross_entropy(q.float(), actions, reduction="none")


def awr_weights(rewards: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """w_i = min(exp((R_i - mean R) / λ), w_max) per reply: (N,) -> (N,).

    Advantage-weighted regression (Peng et al. 2019) with one step and the dataset's mean reward as the
    baseline: the NLL of each reply is weighted by w_i. Clipping bounds the few replies that dominate."""
    return torch.exp((rewards - rewards.mean()) / temperature).clamp(max=max_weight)


@torch.no_grad()
def polyak_update(targets: Iterable[torch.Tensor], online: Iterable[torch.Tensor], rate: float) -> None:
    """θ̂ ← (1 - ρ)·θ̂ + ρ·θ for each pair of target and online parameters (in place)."""
    for target, param in zip(targets, online, strict=True):
        target.lerp_(param, rate)
