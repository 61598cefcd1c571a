"""Experience for one PPO step: sample responses, score them, and turn scores into advantages.

A global batch of B prompts is split over processes (process r holds rows r, r + W, ...). Each row samples
from its own seed (seed, step, row), so the responses do not depend on the number of processes or on
where a run was resumed. Statistics that shape the update (reward normalisation, advantage whitening,
the KL used by the adaptive β) are computed over the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.data.records import Text
from rlhfkit.generation.engine import HFEngine, RolloutEngine
from rlhfkit.generation.sampling import SamplingSettings, response_sequences
from rlhfkit.ops import masked_sum
from rlhfkit.ppo.advantages import (
    MOMENT_KEYS,
    KLEstimator,
    explained_variance,
    gae,
    kl_estimate,
    masked_moments,
    token_rewards,
    whiten,
)
from rlhfkit.ppo.controllers import KLController, RunningMoments
from rlhfkit.ppo.model import ActorCritic
from rlhfkit.scores import GoldFunction, distinct_n
from rlhfkit.scoring.sources import CombinedReward
from rlhfkit.training.batching import PaddedBatch, TokenSequence, chunks, pad_batch
from rlhfkit.training.metrics import StepMetrics


@dataclass(frozen=True)
class RewardShaping:
    """How sequence scores become per-token rewards and advantages (fields of the PPO config)."""

    kl_estimator: KLEstimator
    missing_eos_penalty: float
    reward_norm: bool
    reward_clip: float | None
    gamma: float
    lam: float
    whiten_advantages: bool


@dataclass
class Rollout:
    """This process's rows of a batch. Per-token tensors are (b, R), R = the longest response."""

    sequences: list[TokenSequence]  # prompt + response, the response marked
    mask: torch.Tensor  # 1 on response tokens through EOS
    logprobs: torch.Tensor  # log π_old(y_t), at the sampling temperature
    values: torch.Tensor  # V_old(s_t)
    advantages: torch.Tensor
    returns: torch.Tensor
    prompts: list[Text]
    texts: list[str]
    scores: torch.Tensor  # (b,) the combined reward, before normalisation
    engine_logprobs: torch.Tensor | None = None  # log π_engine(y_t) the rollout engine sampled with (vLLM)


def row_seeds(seed: int, step: int, rows: list[int]) -> list[int]:
    """One sampling seed per (run seed, step, row of the global batch)."""
    return [hash((seed, step, row)) % (2**63) for row in rows]


def scatter_tokens(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Values of the masked positions in row-major order (N,) -> (b, R), zeros elsewhere."""
    out = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
    out[mask.bool()] = flat
    return out


def gather_tokens(values: torch.Tensor, rows: list[int], mask: torch.Tensor) -> torch.Tensor:
    """The inverse of scatter_tokens for some rows: (b, R) -> (N,) in row-major order."""
    return values[rows][mask[rows].bool()]


def batch_on(sequences: list[TokenSequence], pad_id: int, device: torch.device) -> PaddedBatch:
    batch = pad_batch(sequences, pad_id)
    return PaddedBatch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.loss_mask.to(device))


@torch.no_grad()
def forward_rows(
    model: ActorCritic, reference: PreTrainedModel | None, sequences: list[TokenSequence], pad_id: int, micro: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log π, log π_ref, V, entropy) of every response token, concatenated row by row."""
    device = next(model.parameters()).device
    parts: list[tuple[torch.Tensor, ...]] = []
    for rows in chunks(list(range(len(sequences))), micro):
        batch = batch_on([sequences[i] for i in rows], pad_id, device)
        scored = batch.loss_mask[:, 1:].bool()
        logprobs, values, token_entropy = model(batch.input_ids, batch.attention_mask, scored)
        ref = model.reference_logprobs(reference, batch.input_ids, batch.attention_mask, scored)
        parts.append((logprobs, ref, values, token_entropy))
    return tuple(torch.cat(column).float().cpu() for column in zip(*parts, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class Responses:
    """This process's sampled responses, read token by token by π, π_ref and the critic: (b, R) tensors."""

    texts: list[str]
    sequences: list[TokenSequence]  # prompt + response, the response marked
    mask: torch.Tensor  # 1 on response tokens through EOS
    ended: torch.Tensor  # (b,) bool: the response has an EOS
    logprobs: torch.Tensor  # log π(y_t), at the sampling temperature
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    engine_logprobs: torch.Tensor | None  # log π_engine(y_t), from the engine that sampled (vLLM), else None


def sample_responses(
    model: ActorCritic,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Text],
    seeds: list[int],
    settings: SamplingSettings,
    micro: int,
    engine: RolloutEngine,
) -> Responses:
    """Step 1: one response per prompt (row seeds) from the engine, given the policy's current weights first;
    then its log-probabilities (recomputed by the trainer), reference log-probabilities, values and entropies,
    read in eval mode (the model is put back in its mode after)."""
    was_training = model.training
    model.eval()
    engine.load_weights(model.policy)
    samples = engine.sample(prompts, settings, seeds)
    sequences = response_sequences(samples)
    if any(len(s.input_ids) == sum(s.loss_mask) for s in sequences):
        raise ValueError("an empty prompt: the first response token needs a prompt token to be predicted from")
    mask = samples.response_mask.cpu().float()
    logprobs, ref_logprobs, values, entropy = (
        scatter_tokens(t, mask) for t in forward_rows(model, reference, sequences, tokenizer.pad_token_id, micro)
    )
    model.train(was_training)
    ended = (samples.response_ids == tokenizer.eos_token_id).any(1).cpu()
    engine_logprobs = None if samples.logprobs is None else samples.logprobs.float().cpu() * mask
    return Responses(samples.texts, sequences, mask, ended, logprobs, ref_logprobs, values, entropy, engine_logprobs)


def shaped_scores(
    accelerator: Accelerator,
    raw_scores: torch.Tensor,
    ended: torch.Tensor,
    moments: RunningMoments,
    shaping: RewardShaping,
    update_statistics: bool,
) -> torch.Tensor:
    """Step 2: the scores the update sees: less the missing-EOS penalty, normalised by the running moments
    of the global batches' scores (updated first, unless `update_statistics` is False), then clipped."""
    scores = raw_scores - shaping.missing_eos_penalty * (~ended).float()
    if shaping.reward_norm:
        if update_statistics:
            update_moments(accelerator, moments, scores)
        scores = (scores - moments.mean) / max(moments.std, 1e-8)
    if shaping.reward_clip is not None:
        scores = scores.clamp(-shaping.reward_clip, shaping.reward_clip)
    return scores


def kl_penalty(responses: Responses, estimator: KLEstimator) -> torch.Tensor:
    """Step 3: the per-token KL estimate to the reference, 0 off the response."""
    return kl_estimate(responses.logprobs, responses.ref_logprobs, estimator) * responses.mask


def advantages_and_returns(
    accelerator: Accelerator, rewards: torch.Tensor, responses: Responses, shaping: RewardShaping
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 4: GAE on the per-token rewards; advantages whitened over the global batch if asked."""
    advantages, returns = gae(rewards, responses.values, responses.mask, shaping.gamma, shaping.lam)
    if shaping.whiten_advantages:
        local = masked_moments(advantages, responses.mask).to(accelerator.device)
        advantages = whiten(advantages, responses.mask, accelerator.reduce(local, reduction="sum").cpu())
    return advantages, returns


def rollout_metrics(
    accelerator: Accelerator,
    responses: Responses,
    per_sequence: dict[str, torch.Tensor],
    returns: torch.Tensor,
) -> dict[str, float]:
    """Means over the global batch: `per_sequence` values and the KL, lengths, entropy and critic fit."""
    mask = responses.mask
    log_ratio = (responses.logprobs - responses.ref_logprobs) * mask
    stats = StepMetrics()
    stats.add(
        per_sequence
        | {
            "kl/k1": log_ratio.sum(1),
            "kl/k3": (kl_estimate(responses.logprobs, responses.ref_logprobs, "k3") * mask).sum(1),
            "response/length": mask.sum(1),
            "response/ended": responses.ended.float(),
        }
    )
    residuals = returns - responses.values
    moments_of_values = dict(zip(MOMENT_KEYS, (returns, returns.square(), residuals, residuals.square()), strict=True))
    token_stats = {"kl/k1_per_token": log_ratio, "policy/entropy": responses.entropy, **moments_of_values}
    if responses.engine_logprobs is not None:  # the engine's numerics against the trainer's, same weights
        token_stats["rollout/engine_logprob_gap"] = (responses.engine_logprobs - responses.logprobs).abs()
    for name, per_token in token_stats.items():
        stats.add_total(name, masked_sum(per_token, mask), mask.sum())
    metrics = stats.mean(accelerator)
    metrics["ppo/explained_variance"] = explained_variance(*(metrics.pop(key) for key in MOMENT_KEYS))
    metrics["response/distinct2"] = distinct_n(gather_object(responses.texts))
    return metrics


def collect_rollout(
    accelerator: Accelerator,
    model: ActorCritic,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Text],
    seeds: list[int],
    reward: CombinedReward,
    kl: KLController,
    moments: RunningMoments,
    shaping: RewardShaping,
    settings: SamplingSettings,
    micro: int,
    gold: GoldFunction | None = None,
    update_statistics: bool = True,
    engine: RolloutEngine | None = None,
) -> tuple[Rollout, dict[str, float]]:
    """Sample → score → KL → advantages for this process's prompts; the rollout and global-batch metrics.

    With `update_statistics` False (held-out evaluation) the running reward moments are used, not updated.
    `engine` samples (default: transformers' generate on the policy).
    """
    engine = engine or HFEngine(model.policy, tokenizer)
    responses = sample_responses(model, reference, tokenizer, prompts, seeds, settings, micro, engine)
    raw_scores, terms = reward(prompts, responses.texts)
    raw_scores = raw_scores.cpu().float()
    scores = shaped_scores(accelerator, raw_scores, responses.ended, moments, shaping, update_statistics)
    kl_tokens = kl_penalty(responses, shaping.kl_estimator)
    rewards = token_rewards(scores, kl_tokens, kl.beta, responses.mask)
    advantages, returns = advantages_and_returns(accelerator, rewards, responses, shaping)
    per_sequence = {
        "reward/score": raw_scores,
        "reward/total": rewards.sum(1),
        "kl/penalty": kl_tokens.sum(1),
        **{f"reward/{name}": term.cpu().float() for name, term in terms.items()},
    }
    if gold is not None:
        per_sequence["gold/score"] = torch.tensor([gold(p, t) for p, t in zip(prompts, responses.texts, strict=True)])
    rollout = Rollout(
        responses.sequences, responses.mask, responses.logprobs, responses.values, advantages, returns,
        list(prompts), responses.texts, raw_scores, responses.engine_logprobs,
    )  # fmt: skip
    return rollout, rollout_metrics(accelerator, responses, per_sequence, returns)


def update_moments(accelerator: Accelerator, moments: RunningMoments, scores: torch.Tensor) -> None:
    """Merge the global batch's scores (count, mean, variance over all processes) into the running moments."""
    local = torch.tensor([len(scores), scores.sum(), scores.square().sum()], dtype=torch.float64)
    count, total, total_sq = accelerator.reduce(local.to(accelerator.device), reduction="sum").tolist()
    mean = total / count
    moments.update(count, mean, total_sq / count - mean**2)
