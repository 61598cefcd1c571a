"""Gold score, KL to a reference and diversity of a policy's fresh samples on held-out prompts.

The KL is the sampled estimate KL(π || π_ref) ≈ mean over response tokens of log π(y_t) - log π_ref(y_t)
(the k1 estimator, Schulman 2020, "Approximating KL divergence"), with y sampled from π: nats per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.data.records import Text
from rlhfkit.generation.engine import HFEngine, RolloutEngine
from rlhfkit.generation.sampling import SamplingSettings, response_sequences
from rlhfkit.models.logprobs import lm_parts, target_logprobs
from rlhfkit.scores import GoldFunction, distinct_n
from rlhfkit.training.batching import TokenSequence, pad_batch


@torch.no_grad()
def response_logprobs(model: PreTrainedModel, rows: list[TokenSequence], pad_id: int) -> torch.Tensor:
    """log p(y_t | x, y_<t) of every response token of every row, concatenated in order."""
    batch = pad_batch(rows, pad_id)
    logprobs, _ = target_logprobs(*lm_parts(model), batch.input_ids, batch.attention_mask, batch.loss_mask)
    return logprobs


@dataclass(frozen=True)
class PolicySamples:
    """One fresh response per prompt, and Σ over all response tokens of log π(y_t) - log π_ref(y_t)."""

    texts: list[str]
    log_ratio_sum: float
    tokens: int  # response tokens in all, EOS included


def sample_with_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    settings: SamplingSettings,
    batch_size: int = 64,
    seeds: list[int] | None = None,
    engine: RolloutEngine | None = None,
) -> PolicySamples:
    """Sample each prompt once from the policy (with `seeds`: each row from its own seed, whatever its batch)
    and sum the k1 log-ratios of the sampled tokens. `engine` samples (default: generate on the policy)."""
    engine = engine or HFEngine(policy, tokenizer)
    texts, kl_sum, tokens = [], 0.0, 0
    for start in range(0, len(prompts), batch_size):
        part = prompts[start : start + batch_size]
        samples = engine.sample(part, settings, None if seeds is None else seeds[start : start + batch_size])
        rows = response_sequences(samples)
        log_ratio = response_logprobs(policy, rows, tokenizer.pad_token_id) - response_logprobs(
            reference, rows, tokenizer.pad_token_id
        )
        kl_sum, tokens = kl_sum + log_ratio.sum().item(), tokens + log_ratio.numel()
        texts += samples.texts
    return PolicySamples(texts, kl_sum, tokens)


def sample_metrics(prompts: list[Any], samples: PolicySamples, gold: GoldFunction | None) -> dict[str, float]:
    """eval/gold (mean) and eval/positive (share of gold > 0) when a gold score is given, eval/kl (nats/token),
    eval/kl_per_response (nats), eval/distinct2, eval/length (tokens per response)."""
    metrics = {}
    if gold is not None:
        scores = [gold(p, t) for p, t in zip(prompts, samples.texts, strict=True)]
        metrics = {"eval/gold": sum(scores) / len(scores), "eval/positive": sum(s > 0 for s in scores) / len(scores)}
    return metrics | {
        "eval/kl": samples.log_ratio_sum / max(1, samples.tokens),
        "eval/kl_per_response": samples.log_ratio_sum / len(prompts),
        "eval/distinct2": distinct_n(samples.texts),
        "eval/length": samples.tokens / len(prompts),
    }


def evaluate_policy(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Text],
    gold: GoldFunction,
    settings: SamplingSettings,
    batch_size: int = 64,
    seeds: list[int] | None = None,
    engine: RolloutEngine | None = None,
) -> dict[str, float]:
    """`sample_metrics` of fresh samples (`sample_with_kl`) for these prompts."""
    samples = sample_with_kl(policy, reference, tokenizer, prompts, settings, batch_size, seeds, engine)
    return sample_metrics(prompts, samples, gold)
