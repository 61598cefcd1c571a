"""Rows that repeat a prompt read it once: one forward of each distinct prompt, its KV cache copied to the rows.

GRPO and RLOO sample G replies per prompt, best-of-n n, so a batch repeats each prompt G times. Both the
sampler's prefill and the update's forward read the distinct prompts (all but their last token) once, then
each row's last prompt token and reply against the copied cache. The copy (`index_select`) is differentiable,
so the update's gradients through the prompt are those of the full rows. Positions follow the prompts'
left padding as `generate` numbers them (cumsum of the mask - 1), so every row sees what its own full
forward sees, up to float rounding of the different shapes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from rlhfkit.training.batching import PaddedBatch, TokenSequence, pad_batch


def padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token (pads get 0 too)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_keyword(module: nn.Module) -> str:
    """The name a transformers model's forward takes its KV cache under (`cache` since 5.20)."""
    inner = module.get_base_model() if isinstance(module, PeftModel) else module  # peft's forward takes **kwargs
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def prefix_cache(backbone: nn.Module, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> dict[str, Any]:
    """The KV cache of the left-padded prefixes `ids` (U, P), copied to rows (`rows`: (B,) prefix of each), as
    the keyword argument a forward or `generate` of this transformers version takes it under."""
    keyword = cache_keyword(backbone)
    output = backbone(input_ids=ids, attention_mask=mask, position_ids=padded_positions(mask), use_cache=True)
    cache = output[keyword]
    cache.batch_select_indices(rows)
    return {keyword: cache}


@dataclass(frozen=True)
class SharedPrompts:
    """A batch laid out to read each distinct prompt once.

    `prefix_ids`/`prefix_mask` (U, P): the distinct prompts without their last token, left-padded;
    `rows` (B,): each row's distinct prompt; `batch`: each row's last prompt token and response, right-padded
    (its loss mask marks the response, as the full rows' did); `positions` (B, T): the batch's position ids.
    """

    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    rows: torch.Tensor
    batch: PaddedBatch
    positions: torch.Tensor

    def to(self, device: torch.device) -> SharedPrompts:
        prefix_ids, prefix_mask, rows, positions = (
            t.to(device) for t in (self.prefix_ids, self.prefix_mask, self.rows, self.positions)
        )
        return SharedPrompts(prefix_ids, prefix_mask, rows, self.batch.to(device), positions)

    def inputs(self, backbone: nn.Module) -> dict[str, torch.Tensor | Any]:
        """The backbone's keyword arguments for the batch: the prefixes' copied cache, the positions after
        them, and an attention mask over prefix and batch."""
        return {
            "input_ids": self.batch.input_ids,
            "attention_mask": torch.cat([self.prefix_mask[self.rows], self.batch.attention_mask], dim=1),
            "position_ids": self.positions,
            **prefix_cache(backbone, self.prefix_ids, self.prefix_mask, self.rows),
        }


def shared_prompts(sequences: list[TokenSequence], pad_id: int) -> SharedPrompts | None:
    """The shared-prompt layout of `sequences` (prompt: the tokens before the first trained one), or None when
    no prompt repeats or one has fewer than 2 tokens (nothing to share)."""
    lengths = [s.loss_mask.index(1) if 1 in s.loss_mask else 0 for s in sequences]
    prompts = [tuple(s.input_ids[:n]) for s, n in zip(sequences, lengths, strict=True)]
    distinct = list(dict.fromkeys(prompts))
    if min(lengths) < 2 or len(distinct) == len(prompts):
        return None
    width = max(len(p) for p in distinct) - 1
    prefix_ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for i, prompt in enumerate(distinct):  # all but the last token, left-padded
        prefix_ids[i, width - len(prompt) + 1 :] = torch.tensor(prompt[:-1])
        prefix_mask[i, width - len(prompt) + 1 :] = 1
    index = {p: i for i, p in enumerate(distinct)}
    tails = [TokenSequence(s.input_ids[n - 1 :], s.loss_mask[n - 1 :]) for s, n in zip(sequences, lengths, strict=True)]
    batch = pad_batch(tails, pad_id)
    positions = torch.tensor(lengths)[:, None] - 1 + torch.arange(batch.input_ids.shape[1])
    return SharedPrompts(prefix_ids, prefix_mask, torch.tensor([index[p] for p in prompts]), batch, positions)
