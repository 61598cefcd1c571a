"""Gold score, KL to a reference and diversity of a policy's fresh samples on held-out prompts.

The KL is the sampled estimate KL(π || π_ref) ≈ mean over response tokens of log π(y_t) - log π_ref(y_t)
(the k1 estimator, Schulman 2020, "Approximating KL divergence"), with y sampled from π: nats per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.generation.sampling import Samples, SamplingSettings, sample
from rlhfkit.training.batching import TokenSequence, pad_batch
from rlhfkit.training.lm_trainer import lm_parts, target_logprobs


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the word sequences (Li et al. 2016): 0 = repetitive, 1 = varied."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def response_sequences(samples: Samples) -> list[TokenSequence]:
    """Each row as its unpadded prompt followed by its response through EOS, the response marked for scoring."""
    rows = []
    for p_ids, p_mask, r_ids, r_mask in zip(
        samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask, strict=True
    ):
        prompt, response = p_ids[p_mask.bool()].tolist(), r_ids[r_mask.bool()].tolist()
        rows.append(TokenSequence(prompt + response, [0] * len(prompt) + [1] * len(response)))
    return rows


@torch.no_grad()
def response_logprobs(model: PreTrainedModel, rows: list[TokenSequence], pad_id: int) -> torch.Tensor:
    """log p(y_t | x, y_<t) of every response token of every row, concatenated in order."""
    batch = pad_batch(rows, pad_id)
    logprobs, _ = target_logprobs(*lm_parts(model), batch.input_ids, batch.attention_mask, batch.loss_mask)
    return logprobs


def evaluate_policy(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    gold: Callable[[str, str], float],
    settings: SamplingSettings,
    batch_size: int = 64,
) -> dict[str, float]:
    """eval/gold (mean), eval/positive (share of gold > 0), eval/kl (nats/token), eval/distinct2, eval/length."""
    texts, kl_sum, tokens = [], 0.0, 0
    for start in range(0, len(prompts), batch_size):
        part = prompts[start : start + batch_size]
        samples = sample(policy, tokenizer, part, settings)
        rows = response_sequences(samples)
        log_ratio = response_logprobs(policy, rows, tokenizer.pad_token_id) - response_logprobs(
            reference, rows, tokenizer.pad_token_id
        )
        kl_sum, tokens = kl_sum + log_ratio.sum().item(), tokens + log_ratio.numel()
        texts += samples.texts
    scores = [gold(p, t) for p, t in zip(prompts, texts, strict=True)]
    return {
        "eval/gold": sum(scores) / len(scores),
        "eval/positive": sum(s > 0 for s in scores) / len(scores),
        "eval/kl": kl_sum / max(1, tokens),
        "eval/distinct2": distinct_n(texts),
        "eval/length": tokens / len(prompts),
    }
