"""Batched sampling with the KV cache (transformers' `generate`), stopping at EOS.

Prompts are left-padded so every row's next token is at the same position; after a row's EOS, its
remaining positions hold the pad token and are outside `response_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import Config


class SamplingSettings(Config):
    """How to sample responses."""

    max_new_tokens: int = Field(32, ge=1, description="most tokens per response")
    temperature: float = Field(1.0, gt=0, description="softmax temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1: off)")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens (0: off)")
    do_sample: bool = Field(True, description="sample (true) or decode greedily (false)")


@dataclass(frozen=True)
class Samples:
    """Prompts (left-padded) and responses (right-padded after EOS), shapes (batch, time)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # 1 for response tokens up to and including EOS
    texts: list[str]  # decoded responses, without special tokens


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> str:
    """Text prompts pass through; chat prompts (lists of messages) go through the chat template."""
    if isinstance(prompt, str):
        return prompt
    messages = [m if isinstance(m, dict) else m.model_dump() for m in prompt]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including each row's first EOS, 0 after it: (B, T) -> (B, T)."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before t
    return (eos_before == 0).long()


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    settings: SamplingSettings,
) -> Samples:
    """One response per prompt."""
    tokenizer.padding_side = "left"
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    encoded = tokenizer(rendered, return_tensors="pt", padding=True).to(model.device)
    output = model.generate(
        **encoded,
        do_sample=settings.do_sample,
        temperature=settings.temperature if settings.do_sample else None,
        top_p=settings.top_p if settings.do_sample else None,
        top_k=settings.top_k if settings.do_sample else None,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    response_ids = output[:, encoded["input_ids"].shape[1] :]
    mask = response_mask(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Samples(encoded["input_ids"], encoded["attention_mask"], response_ids, mask, texts)
