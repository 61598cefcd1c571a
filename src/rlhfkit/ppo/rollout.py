"""Experience for one PPO step: sample responses, score them, and turn scores into advantages.

A global batch of B rows is split over processes (process r holds rows r, r + W, ...); with G samples per
prompt, rows g·G ... g·G + G - 1 repeat prompt g. Each row samples from its own seed (seed, step, row), so
the responses do not depend on the number of processes or on where a run was resumed. Statistics that shape
the update (reward normalisation, advantage whitening, group baselines, the KL used by the adaptive β) are
computed over the global batch.
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
    grpo,
    informative_groups,
    kl_estimate,
    masked_moments,
    overlong_penalty,
    reinforce_pp,
    rloo,
    token_rewards,
    whiten,
)
from rlhfkit.ppo.controllers import KLController, RunningMoments
from rlhfkit.ppo.model import ActorCritic
from rlhfkit.scores import GoldFunction, distinct_n
from rlhfkit.scoring.sources import Answers, CombinedReward
from rlhfkit.scoring.verifiable import answer_format
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
    estimator: str = "gae"  # an `advantages.ESTIMATORS` function: gae, grpo, rloo or reinforce_pp
    group_size: int = 1  # G samples per prompt, in consecutive rows
    scale_rewards: bool = True  # grpo: divide by the group's std (False: Dr.GRPO)
    kl_in_reward: bool = True  # -β·KL_t in the rewards (False: the update's k3 loss term instead)
    reference_free: bool = False  # no reference model: no KL at all
    overlong_buffer: int = 0  # DAPO's L_cache (0: no overlong penalty)
    overlong_penalty: float = 1.0  # weight of the overlong penalty
    max_length: int = 0  # L_max: sampling's max_new_tokens
    dynamic_sampling: bool = False  # drop groups whose scores are all equal
    logprobs_in_update: bool = False  # training rollouts leave log π_old to the update (`on_policy_update`)


@dataclass
class Rollout:
    """This process's rows of a batch. Per-token tensors are (b, R), R = the longest response."""

    sequences: list[TokenSequence]  # prompt + response, the response marked
    mask: torch.Tensor  # 1 on response tokens through EOS
    logprobs: torch.Tensor | None  # log π_old(y_t), at the sampling temperature (None: read by the update)
    values: torch.Tensor  # V_old(s_t)
    advantages: torch.Tensor
    returns: torch.Tensor
    prompts: list[Text]
    texts: list[str]
    scores: torch.Tensor  # (b,) the combined reward, before normalisation
    ref_logprobs: torch.Tensor  # log π_ref(y_t) (= logprobs without a reference)
    kl_coef: float  # β when the rollout was made: the weight of a KL loss term
    dropped: set[int]  # global rows that dynamic sampling leaves out of the update
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
    return pad_batch(sequences, pad_id).to(device)


@torch.no_grad()
def forward_rows(
    model: ActorCritic,
    reference: PreTrainedModel | None,
    sequences: list[TokenSequence],
    pad_id: int,
    micro: int,
    reference_free: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log π, log π_ref, V, entropy) of every response token, concatenated row by row. Without a value head V
    is 0; reference_free: log π_ref = log π (no reference forward)."""
    device = next(model.parameters()).device
    parts: list[tuple[torch.Tensor, ...]] = []
    for rows in chunks(list(range(len(sequences))), micro):
        batch = batch_on([sequences[i] for i in rows], pad_id, device)
        scored = batch.loss_mask[:, 1:].bool()
        logprobs, values, token_entropy = model(batch.input_ids, batch.attention_mask, scored)
        ref = (
            logprobs
            if reference_free
            else model.reference_logprobs(reference, batch.input_ids, batch.attention_mask, scored)
        )
        parts.append((logprobs, ref, torch.zeros_like(logprobs) if values is None else values, token_entropy))
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
    entropy: torch.Tensor | None  # None: no policy forward (log π and V are then 0, read by the update)
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
    reference_free: bool = False,
    policy_forward: bool = True,
) -> Responses:
    """Step 1: one response per prompt (row seeds) from the engine, given the policy's current weights first;
    then its log-probabilities (recomputed by the trainer), reference log-probabilities, values and entropies,
    read in eval mode (the model is put back in its mode after). Without `policy_forward` (reference-free,
    critic-free, the update reads log π_old) nothing is read and those tensors are 0."""
    was_training = model.training
    model.eval()
    engine.load_weights(model.policy)
    samples = engine.sample(prompts, settings, seeds)
    sequences = response_sequences(samples)
    if any(len(s.input_ids) == sum(s.loss_mask) for s in sequences):
        raise ValueError("an empty prompt: the first response token needs a prompt token to be predicted from")
    mask = samples.response_mask.cpu().float()
    entropy: torch.Tensor | None = None
    if policy_forward:
        logprobs, ref_logprobs, values, entropy = (
            scatter_tokens(t, mask)
            for t in forward_rows(model, reference, sequences, tokenizer.pad_token_id, micro, reference_free)
        )
    else:
        logprobs = ref_logprobs = values = torch.zeros_like(mask)
    model.train(was_training)
    ended = (samples.response_ids == tokenizer.eos_token_id).any(1).cpu()
    engine_logprobs = None if samples.logprobs is None else samples.logprobs.float().cpu() * mask
    return Responses(samples.texts, sequences, mask, ended, logprobs, ref_logprobs, values, entropy, engine_logprobs)


def shaped_scores(
    accelerator: Accelerator,
    raw_scores: torch.Tensor,
    ended: torch.Tensor,
    lengths: torch.Tensor,
    moments: RunningMoments,
    shaping: RewardShaping,
    update_statistics: bool,
) -> torch.Tensor:
    """Step 2: the scores the update sees: less the missing-EOS and overlong penalties, normalised by the
    running moments of the global batches' scores (updated first, unless `update_statistics` is False), then
    clipped."""
    scores = raw_scores - shaping.missing_eos_penalty * (~ended).float()
    if shaping.overlong_buffer:
        penalty = overlong_penalty(lengths, shaping.max_length, shaping.overlong_buffer)
        scores = scores + shaping.overlong_penalty * penalty
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


def global_rows(rows: list[int], values: torch.Tensor) -> torch.Tensor:
    """(b,) values of this process's global `rows` -> (B,) values of the whole global batch, in row order."""
    pairs = sorted(gather_object(list(zip(rows, values.tolist(), strict=True))))
    return torch.tensor([value for _, value in pairs], dtype=values.dtype)


def advantages_and_returns(
    accelerator: Accelerator, rewards: torch.Tensor, responses: Responses, shaping: RewardShaping, rows: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 4: the estimator's advantages: GAE on the per-token rewards, whitened over the global batch if
    asked; REINFORCE++'s returns normalised over the global batch; or GRPO's or RLOO's group baseline on the
    sequence rewards (Σ_t r_t) of the global batch, on every token of a row. Critic-free returns are the
    plain returns (γ, no critic), logged only."""
    mask = responses.mask

    def total(local: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(local.to(accelerator.device), reduction="sum").cpu()

    if shaping.estimator == "gae":
        advantages, returns = gae(rewards, responses.values, mask, shaping.gamma, shaping.lam)
        if shaping.whiten_advantages:
            advantages = whiten(advantages, mask, total(masked_moments(advantages, mask)))
        return advantages, returns
    if shaping.estimator == "reinforce_pp":
        return reinforce_pp(rewards, mask, shaping.gamma, total)
    sequence_rewards = global_rows(rows, rewards.sum(1))
    if shaping.estimator == "grpo":
        per_row = grpo(sequence_rewards, shaping.group_size, shaping.scale_rewards)
    else:
        per_row = rloo(sequence_rewards, shaping.group_size)
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, shaping.gamma, lam=1.0)
    return per_row[rows][:, None] * mask, returns


def group_filter(
    rows: list[int], raw_scores: torch.Tensor, shaping: RewardShaping
) -> tuple[set[int], dict[str, float]]:
    """The global rows dynamic sampling drops (groups whose G scores are all equal, if asked) and the share of
    such groups; nothing without groups."""
    if shaping.group_size < 2:
        return set(), {}
    informative = informative_groups(global_rows(rows, raw_scores), shaping.group_size)
    share = 1 - informative.float().mean().item()  # groups are equal in size: the share of rows is that of groups
    if not shaping.dynamic_sampling:
        return set(), {"groups/all_equal": share}
    return set((~informative).nonzero().flatten().tolist()), {"groups/all_equal": share, "groups/dropped": share}


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
    token_stats = {"kl/k1_per_token": log_ratio, **moments_of_values}
    if responses.entropy is not None:
        token_stats["policy/entropy"] = responses.entropy
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
    rows: list[int],
    seeds: list[int],
    reward: CombinedReward,
    kl: KLController,
    moments: RunningMoments,
    shaping: RewardShaping,
    settings: SamplingSettings,
    micro: int,
    gold: GoldFunction | None = None,
    update_statistics: bool = True,
    answers: Answers | None = None,
    engine: RolloutEngine | None = None,
) -> tuple[Rollout, dict[str, float]]:
    """Sample → score → KL → advantages for this process's prompts (global `rows` of the batch); the rollout
    and global-batch metrics.

    With `update_statistics` False (held-out evaluation) the running reward moments are used, not updated, and
    no advantages are computed (nothing trains on the rollout). `answers` are the prompts' reference answers,
    for the reward's checkers. `engine` samples (default: transformers' generate on the policy).
    """
    engine = engine or HFEngine(model.policy, tokenizer)
    policy_forward = not (shaping.logprobs_in_update and update_statistics)
    responses = sample_responses(
        model, reference, tokenizer, prompts, seeds, settings, micro, engine, shaping.reference_free, policy_forward
    )
    raw_scores, terms = reward(prompts, responses.texts, answers)
    raw_scores = raw_scores.cpu().float()
    lengths = responses.mask.sum(1)
    scores = shaped_scores(accelerator, raw_scores, responses.ended, lengths, moments, shaping, update_statistics)
    kl_tokens = kl_penalty(responses, shaping.kl_estimator)
    rewards = token_rewards(scores, kl_tokens, kl.beta if shaping.kl_in_reward else 0.0, responses.mask)
    advantages = returns = torch.zeros_like(rewards)
    dropped: set[int] = set()
    group_metrics: dict[str, float] = {}
    if update_statistics:
        advantages, returns = advantages_and_returns(accelerator, rewards, responses, shaping, rows)
        dropped, group_metrics = group_filter(rows, raw_scores, shaping)
    per_sequence = {
        "reward/score": raw_scores,
        "reward/total": rewards.sum(1),
        "kl/penalty": kl_tokens.sum(1),
        **{f"reward/{name}": term.cpu().float() for name, term in terms.items()},
    }
    if reward.checkers:
        per_sequence |= answer_metrics(terms[reward.checkers[0]], responses.texts)
    if gold is not None:
        per_sequence["gold/score"] = torch.tensor([gold(p, t) for p, t in zip(prompts, responses.texts, strict=True)])
    rollout = Rollout(
        responses.sequences, responses.mask, responses.logprobs if policy_forward else None, responses.values,
        advantages, returns,
        list(prompts), responses.texts, raw_scores, responses.ref_logprobs, kl.beta, dropped,
        responses.engine_logprobs,
    )  # fmt: skip
    metrics = rollout_metrics(accelerator, responses, per_sequence, returns) | group_metrics
    if shaping.estimator != "gae":  # no critic to explain the returns
        del metrics["ppo/explained_variance"]
    if shaping.reference_free:  # no reference: no KL to report
        metrics = {key: value for key, value in metrics.items() if not key.startswith("kl/")}
    return rollout, metrics


def answer_metrics(checked: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor]:
    """Per reply: the first checker's score (1 right, 0 wrong: its mean is the accuracy) and whether the
    reply ends in the stated `Answer: N` form (`scoring.verifiable`)."""
    return {
        "answer/accuracy": checked.cpu().float(),
        "answer/format": torch.tensor([answer_format("", text) for text in texts]),
    }


def update_moments(accelerator: Accelerator, moments: RunningMoments, scores: torch.Tensor) -> None:
    """Merge the global batch's scores (count, mean, variance over all processes) into the running moments."""
    local = torch.tensor([len(scores), scores.sum(), scores.square().sum()], dtype=torch.float64)
    count, total, total_sq = accelerator.reduce(local.to(accelerator.device), reduction="sum").tolist()
    mean = total / count
    moments.update(count, mean, total_sq / count - mean**2)
