"""Reward-model batches: comparisons as tensors, each reply forwarded once, and the loss of a batch.

A batch holds P comparisons with K_p replies each. All replies are forwarded once (never once per pair),
in a few length buckets, each reply is read on the head its labels train, and the rewards are laid out
as a (P, K) table for `losses.ranking_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rlhfkit.models.reward import RewardModel, pad_sequences
from rlhfkit.reward.losses import ranking_loss

FORWARD_OVERHEAD = 64  # one more forward call is worth it if it saves this many padded token positions


@dataclass(frozen=True)
class RewardBatch:
    """Comparisons as tensors. Every reply is forwarded once, in length buckets (see `length_buckets`)."""

    forwards: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (reply index, input_ids, mask) per bucket
    head: torch.Tensor  # (R,) the head each reply is read on
    slot: tuple[torch.Tensor, torch.Tensor]  # (R,), (R,): the reply's (comparison, position) in `ranks`
    ranks: torch.Tensor  # (P, K) ranks, padded
    mask: torch.Tensor  # (P, K) bool: a real reply
    margin: torch.Tensor  # (P,)
    pairs: int  # compared pairs, Σ C(K_p, 2)

    @property
    def positions(self) -> int:
        """Token positions the model computes, padding included."""
        return sum(ids.numel() for _, ids, _ in self.forwards)


@dataclass(frozen=True)
class TokenizedComparison:
    ids: list[list[int]]
    ranks: list[int]
    margin: float
    head: int


def length_buckets(lengths: list[int], overhead: int = FORWARD_OVERHEAD) -> list[list[int]]:
    """Indices grouped into runs of similar length: min Σ (rows x longest) + overhead x buckets, exactly.

    The two replies of a pair, or the K of a ranking, often differ in length, so one padded batch of all
    replies pays for padding that a few length-sorted forwards do not. Dynamic programming over the
    sorted lengths: best[j] = min_i best[i] + (j - i)·len_(j-1) + overhead.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    best, cut = [0] + [math.inf] * len(sizes), [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * sizes[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], len(sizes)
    while j:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


def collate(comparisons: list[TokenizedComparison], pad_id: int) -> RewardBatch:
    replies = [seq for c in comparisons for seq in c.ids]
    forwards = []
    for bucket in length_buckets([len(seq) for seq in replies]):
        ids, mask = pad_sequences([replies[i] for i in bucket], pad_id)
        forwards.append((torch.tensor(bucket), ids, mask))
    rows = torch.tensor([p for p, c in enumerate(comparisons) for _ in c.ids])
    cols = torch.tensor([i for c in comparisons for i in range(len(c.ids))])
    k = max(len(c.ids) for c in comparisons)
    ranks = torch.zeros(len(comparisons), k, dtype=torch.long)
    ranks[rows, cols] = torch.tensor([r for c in comparisons for r in c.ranks])
    real = torch.zeros(len(comparisons), k, dtype=torch.bool)
    real[rows, cols] = True
    return RewardBatch(
        forwards=forwards,
        head=torch.tensor([c.head for c in comparisons for _ in c.ids]),
        slot=(rows, cols),
        ranks=ranks,
        mask=real,
        margin=torch.tensor([c.margin for c in comparisons], dtype=torch.float32),
        pairs=sum(math.comb(len(c.ids), 2) for c in comparisons),
    )


class BucketedRewards(nn.Module):
    """Wraps a RewardModel: forward runs every bucket of a batch, one DDP forward per micro-batch."""

    def __init__(self, model: RewardModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, forwards: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """[(input_ids, mask)] -> (R, H) head outputs, the buckets' rows one after the other."""
        return torch.cat([self.model(ids, mask) for ids, mask in forwards])


def batch_loss(model: nn.Module, batch: RewardBatch, device: torch.device):
    """Forward every reply once, read each on its head, and take the ranking loss per comparison."""
    index = torch.cat([i for i, _, _ in batch.forwards])  # (R,): which reply each output row is
    heads = model([(ids.to(device), mask.to(device)) for _, ids, mask in batch.forwards])  # (R, H)
    reward = heads.gather(1, batch.head[index].to(device)[:, None]).squeeze(1)  # (R,)
    rows, cols = (t[index].to(device) for t in batch.slot)
    rewards = torch.zeros(batch.ranks.shape, dtype=reward.dtype, device=device).index_put((rows, cols), reward)
    return ranking_loss(rewards, batch.ranks.to(device), batch.mask.to(device), batch.margin.to(device))
