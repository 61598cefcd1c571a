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
    prompt_tokens_cut: int = 0  # tokens `fit_to_length` took off the start of the prompt


def context_window(prompt: int, response: int, max_length: int) -> tuple[int, int]:
    """How many (prompt, response) tokens of a too-long example fit in `max_length`: the rule of every trainer.

    The prompt loses its start first, but keeps at least half of max_length (all of itself if shorter);
    the response then has the rest. So a prompt longer than the context never leaves a row with nothing
    to train, and a short prompt is never cut to fit a long response.
    """
    if prompt + response <= max_length:
        return prompt, response
    kept_prompt = min(prompt, max(max_length - response, max_length // 2))
    return kept_prompt, max_length - kept_prompt


def fit_to_length(seq: TokenSequence, max_length: int) -> TokenSequence:
    """`seq` within `max_length` tokens by `context_window`; the prompt is everything before the first trained
    token, and the response keeps its start (it is trained left to right)."""
    prompt = seq.loss_mask.index(1) if 1 in seq.loss_mask else len(seq.loss_mask)
    kept_prompt, kept_response = context_window(prompt, len(seq.input_ids) - prompt, max_length)
    start, end = prompt - kept_prompt, prompt + kept_response
    return TokenSequence(seq.input_ids[start:end], seq.loss_mask[start:end], start)


def cut_prompts_note(sequences: list[TokenSequence], max_length: int, what: str) -> list[str]:
    """A log line counting the sequences whose prompt lost its start (none when no prompt was cut)."""
    cut = sum(s.prompt_tokens_cut > 0 for s in sequences)
    return [f"{cut} {what} longer than max_length={max_length}: their prompts lost their start"] if cut else []


@dataclass(frozen=True)
class PaddedBatch:
    """Right-padded tensors of shape (batch, time)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device: torch.device) -> PaddedBatch:
        return PaddedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))


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
