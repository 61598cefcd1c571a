"""Token sequences with a loss mask, their padding, and a deterministic batch order.

The order depends only on (seed, step), so a resumed run and a run on several processes see exactly the
batches of a single uninterrupted run: process r takes every world-th sequence of the global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenSequence:
    """One training sequence: token ids and, per token, 1 where its prediction is trained."""

    input_ids: list[int]
    loss_mask: list[int]


@dataclass(frozen=True)
class PaddedBatch:
    """Right-padded tensors of shape (batch, time)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor


def pad_batch(sequences: list[TokenSequence], pad_token_id: int) -> PaddedBatch:
    """Right-pad to the longest sequence; padding is masked for attention and loss."""
    width = max(len(s.input_ids) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    loss = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq.input_ids)
        ids[row, :n] = torch.tensor(seq.input_ids)
        attention[row, :n] = 1
        loss[row, :n] = torch.tensor(seq.loss_mask)
    return PaddedBatch(ids, attention, loss)


class BatchOrder:
    """Global batches of `batch_size` indices from an endless stream of seeded epoch permutations.

    With `group_by_length`, each window of 64 batches is sorted by length before being cut into batches
    (less padding), and the batches are then shuffled, as in Hugging Face's length-grouped sampler.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool) -> None:
        if not lengths:
            raise ValueError("no training sequences")
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self._epochs: dict[int, list[int]] = {}

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.lengths), generator=generator).tolist()
            if self.group_by_length:
                window = self.batch_size * 64
                order = [
                    i
                    for start in range(0, len(order), window)
                    for i in sorted(order[start : start + window], key=lambda j: -self.lengths[j])
                ]
                batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
                shuffle = torch.randperm(len(batches), generator=generator).tolist()
                order = [i for b in shuffle for i in batches[b]]
            self._epochs = {epoch: order}  # keep one epoch: steps only move forward
        return self._epochs[epoch]

    def global_batch(self, step: int) -> list[int]:
        """Indices of the step-th batch; a batch may straddle two epochs, so sizes never vary."""
        start = step * self.batch_size
        out: list[int] = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), len(self.lengths))
            order = self._epoch(epoch)
            out.extend(order[offset : offset + self.batch_size - len(out)])
        return out


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This process's share of a global batch."""
    return indices[rank::world_size]


def chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
