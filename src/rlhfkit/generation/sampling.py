"""Batched sampling with the KV cache (transformers' `generate`), stopping at EOS.

Prompts are left-padded so every row's next token is at the same position; after a row's EOS, its
remaining positions hold the pad token and are outside `response_mask`. A prompt too long for the model's
context with max_new_tokens after it loses its start (`prompt_limit`), as the trainers' prompts do.

With `seeds`, each row draws its own noise: a row's sample depends on its seed, not on which rows share
its batch or on the global random state. PPO uses that so a run split over processes, or resumed from a
checkpoint, samples the very responses an uninterrupted single-process run samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from pydantic import Field
from transformers import (
    BatchEncoding,
    LogitsProcessor,
    LogitsProcessorList,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlhfkit.config import Config, ConfigError
from rlhfkit.models.loading import context_length
from rlhfkit.models.logprobs import lm_parts
from rlhfkit.models.prefix import prefix_cache
from rlhfkit.training.batching import TokenSequence


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
    logprobs: torch.Tensor | None = None  # the engine's log-prob of each sampled token (vLLM), 0 off the mask


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> str:
    """Text prompts pass through; chat prompts (lists of messages) go through the chat template."""
    if isinstance(prompt, str):
        return prompt
    messages = [m if isinstance(m, dict) else m.model_dump() for m in prompt]
    return cast(str, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def prompt_limit(model: PreTrainedModel, max_new_tokens: int) -> int | None:
    """The most prompt tokens that leave room for `max_new_tokens` in the model's context (None: no limit)."""
    return config_prompt_limit(model.config, max_new_tokens)


def config_prompt_limit(config: PretrainedConfig, max_new_tokens: int) -> int | None:
    """`prompt_limit` from the model's config."""
    context = context_length(config)
    if context is None:
        return None
    if max_new_tokens >= context:
        raise ConfigError(
            f"sampling.max_new_tokens={max_new_tokens} leaves no room for a prompt in a {context}-token context"
        )
    return context - max_new_tokens


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including each row's first EOS, 0 after it: (B, T) -> (B, T)."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before t
    return (eos_before == 0).long()


class SeededGumbelSampler(LogitsProcessor):
    """Sampling as argmax of (logits / T, top-k/top-p filtered) + Gumbel noise, one generator per row.

    argmax_v(z_v + g_v) with g_v ~ Gumbel(0, 1) is a draw from softmax(z) (the Gumbel-max trick), so greedy
    decoding of these scores samples exactly as `do_sample` would.
    """

    def __init__(self, seeds: list[int], settings: SamplingSettings) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.warpers = LogitsProcessorList()
        if settings.top_k:
            self.warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(settings.top_p))
        self.temperature = settings.temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        warped = self.warpers(input_ids, cast(torch.FloatTensor, scores.float() / self.temperature))
        uniform = torch.stack([torch.rand(warped.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
        return cast(torch.FloatTensor, warped + gumbel.to(warped.device))


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Any], limit: int | None) -> BatchEncoding:
    """Rendered prompts as left-padded ids, each cut to its last `limit` tokens (too long a prompt loses its
    start, as in training)."""
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    return tokenizer(rendered, return_tensors="pt", padding=True, truncation=limit is not None, max_length=limit)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    settings: SamplingSettings,
    seeds: list[int] | None = None,
) -> Samples:
    """One response per prompt; with `seeds` (one per prompt), each row samples from its own generator."""
    encoded = encode_prompts(tokenizer, prompts, prompt_limit(model, settings.max_new_tokens)).to(model.device)
    seeded = seeds is not None and settings.do_sample
    native = settings.do_sample and not seeded  # transformers' own sampling, from the global generator
    output = model.generate(  # type: ignore[operator]  # GenerationMixin's, not a Module attribute
        **encoded,
        **shared_prompt_cache(model, encoded),
        do_sample=native,
        temperature=settings.temperature if native else None,
        top_p=settings.top_p if native else None,
        top_k=settings.top_k if native else None,
        logits_processor=LogitsProcessorList([SeededGumbelSampler(seeds or [], settings)]) if seeded else None,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    response_ids = output[:, encoded["input_ids"].shape[1] :]
    mask = response_mask(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Samples(encoded["input_ids"], encoded["attention_mask"], response_ids, mask, texts)


def shared_prompt_cache(model: PreTrainedModel, encoded: BatchEncoding) -> dict[str, Any]:
    """When rows repeat a prompt (G samples per prompt, best-of-n), `generate`'s cache argument: the KV cache
    of all prompt tokens but the last, read once per distinct prompt and copied to its rows (`models.prefix`);
    `generate` then reads only the last prompt token. {} when every prompt is distinct or is one token."""
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    distinct, rows = torch.unique(ids, dim=0, return_inverse=True)
    if len(distinct) == len(ids) or ids.shape[1] < 2:
        return {}
    first = torch.zeros(len(distinct), dtype=torch.long, device=ids.device).scatter_(
        0, rows, torch.arange(len(ids), device=ids.device)
    )  # a row of each distinct prompt
    backbone, _ = lm_parts(model)
    return prefix_cache(backbone, ids[first, :-1], mask[first, :-1], rows)


def response_sequences(samples: Samples) -> list[TokenSequence]:
    """Each row as its unpadded prompt followed by its response through EOS, the response marked for scoring."""
    rows = []
    for p_ids, p_mask, r_ids, r_mask in zip(
        samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask, strict=True
    ):
        prompt, response = p_ids[p_mask.bool()].tolist(), r_ids[r_mask.bool()].tolist()
        rows.append(TokenSequence(prompt + response, [0] * len(prompt) + [1] * len(response)))
    return rows
