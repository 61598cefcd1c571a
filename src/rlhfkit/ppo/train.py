"""`rlhfkit ppo`: the RL stage of InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, section 3.5).

Each step: sample one response per prompt for a global batch of prompts (`rollout.py`: the reward on
the last token, a per-token KL penalty to the frozen reference, GAE, whitened advantages), then
`ppo_epochs` passes over the batch in shuffled minibatches, each one optimizer step on

    L = PPO clipped surrogate + vf_coef · clipped value loss  [+ ptx_coef · LM loss on a pretraining batch]

(PPO-ptx, InstructGPT eq. 2). `algo: a2c` makes one pass of the plain policy gradient instead.

The same loop runs the critic-free estimators (`advantages.ESTIMATORS`): `algo: grpo`, `rloo` (G samples
per prompt from one batched generation, a group baseline) and `reinforce_pp` (a globally normalised
return); they build no critic and have no value loss. The KL to the reference goes into the rewards
(InstructGPT) or into the loss as a k3 term (GRPO); with β = 0 there need be no reference at all.

Losses are means over the global minibatch (`training.reduction.GlobalMean`): of tokens, of sequences, or
of sequences × max length (`loss_aggregation`), so two processes reproduce one. A minibatch is a seeded
draw of global rows; each process trains on the drawn rows it sampled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit import assets
from rlhfkit.config import ConfigError
from rlhfkit.data.corpus import blocks, read_paragraphs
from rlhfkit.data.records import PromptSet, Text, load_records, read_prompt_set, text_as_json
from rlhfkit.data.tokenize import tokenize_sft
from rlhfkit.generation.engine import ENGINE_HELP, EngineKind, RolloutEngine, check_engine, rollout_engine
from rlhfkit.generation.sampling import SamplingSettings, prompt_limit, render_prompt
from rlhfkit.models.loading import LoraSettings, disable_dropout, load_model, load_tokenizer
from rlhfkit.models.prefix import shared_prompts
from rlhfkit.models.reward_ensemble import is_reward_model
from rlhfkit.ppo.advantages import ESTIMATORS, Algo, KLEstimator, kl_estimate
from rlhfkit.ppo.controllers import KLController, RunningMoments
from rlhfkit.ppo.losses import (
    LossAggregation,
    clipped_surrogate,
    clipped_value_loss,
    loss_normaliser,
    policy_gradient,
    sequence_log_ratio,
    truncated_importance_weight,
)
from rlhfkit.ppo.model import ActorCritic, CriticKind, build_actor_critic
from rlhfkit.ppo.rollout import (
    RewardShaping,
    Rollout,
    batch_on,
    collect_rollout,
    gather_tokens,
    row_seeds,
)
from rlhfkit.scores import GoldFunction, gold_function
from rlhfkit.scoring.sources import CombinedReward, RewardSource, ScoringError
from rlhfkit.training.batching import BatchOrder, TokenSequence, chunks, shard
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.metrics import StepMetrics
from rlhfkit.training.progress import trim_rows
from rlhfkit.training.reduction import GlobalMean
from rlhfkit.training.run_loop import TrainingRun, TrainResult, optimizer_step, total_steps
from rlhfkit.training.runtime import finish_run, pretrained_saver, start_run


class PPOConfig(TrainSettings):
    """RL from a reward: PPO (or A2C) with a KL penalty to the reference, a critic, and optional PPO-ptx."""

    model: str = Field("tiny-austen", description="policy to tune (usually the SFT model): name, path or hub id")
    ref_model: str | None = Field(
        None, description="reference model (default: the policy's starting weights; with LoRA: adapters off)"
    )
    prompts: str | None = Field(None, description="prompt records (JSONL/JSON/Parquet/dataset dir) (required)")
    eval_prompts: str | None = Field(None, description="held-out prompts, evaluated every eval_every steps")
    eval_size: int = Field(64, ge=1, description="held-out prompts used for evaluation (the first N)")
    rewards: list[RewardSource] = Field(
        default_factory=list, description="reward terms: [{source: DIR or function, weight, heads}] (required)"
    )
    gold: str | None = Field(None, description="gold score to log, never trained on: vader, length, python:mod:fn")
    critic: CriticKind = Field("policy", description="value model: shared (head on the policy), policy or reward")
    algo: Algo = Field(
        "ppo",
        description="ppo (GAE, clipped, epochs) | a2c (GAE, one plain pass) | grpo, rloo (group baselines over "
        "group_size samples) | reinforce_pp (global normalisation); the last three build no critic",
    )
    group_size: int = Field(1, ge=1, description="G: samples per prompt, in one batched generation (grpo/rloo: ≥ 2)")
    scale_rewards: bool = Field(True, description="grpo: divide by the group's reward std (false: Dr.GRPO)")
    kl_placement: Literal["reward", "loss"] = Field(
        "reward", description="-β·KL in the per-token rewards (InstructGPT) or β·k3 KL as a loss term (GRPO)"
    )
    load_reference: bool | None = Field(
        None,
        description="load the reference (false: none, no KL; needs kl_coef 0). None: when kl_coef > 0 or "
        "kl_target is set, and always for ppo/a2c",
    )
    loss_aggregation: LossAggregation = Field(
        "token_mean",
        description="token_mean over the minibatch (DAPO) | sequence_mean (GRPO) | constant: token sum / "
        "max_new_tokens per sequence (Dr.GRPO)",
    )
    importance_ratio: Literal["token", "sequence"] = Field(
        "token", description="PPO's per-token ratio, or GSPO's sequence ratio exp(mean log-ratio), clipped per sequence"
    )
    cliprange_high: float | None = Field(
        None, gt=0, description="upper ratio clip ε_high, DAPO's clip-higher (None: cliprange, symmetric)"
    )
    dynamic_sampling: bool = Field(
        False, description="DAPO: leave groups whose G scores are all equal out of the update (needs group_size ≥ 2)"
    )
    overlong_buffer: int = Field(
        0, ge=0, description="DAPO's soft overlong penalty over the last N tokens before max_new_tokens (0: off)"
    )
    overlong_penalty: float = Field(1.0, ge=0, description="weight of the overlong penalty (its most: -1 at the limit)")
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=32, temperature=1.0),
        description="rollout sampling; its temperature also scales the logits of every log-probability",
    )
    engine: EngineKind = Field("hf", description=ENGINE_HELP)
    tis_cap: float | None = Field(
        None, gt=0, description="truncated importance sampling: weight min(π_old/π_engine, C) (vllm; None: off)"
    )
    batch_size: int = Field(64, ge=1, description="episodes (prompts × group_size) per step, over all processes")
    mini_batch_size: int = Field(16, ge=1, description="episodes per optimizer step, over all processes")
    micro_batch_size: int = Field(16, ge=1, description="episodes per forward pass on one process")
    ppo_epochs: int = Field(4, ge=1, description="passes over each batch (a2c: always 1)")
    learning_rate: float = Field(1e-5, gt=0, description="peak AdamW learning rate of the policy")
    value_learning_rate: float | None = Field(
        None, gt=0, description="peak learning rate of the critic and value head (None: learning_rate)"
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("linear", description="decay after warm-up")
    kl_coef: float = Field(0.05, ge=0, description="β: weight of the per-token KL penalty (initial value if adaptive)")
    kl_estimator: KLEstimator = Field("k1", description="per-token KL estimate in the penalty: k1, k2 or k3")
    kl_target: float | None = Field(None, gt=0, description="adaptive β: target KL per response in nats (None: fixed)")
    kl_horizon: int = Field(10_000, ge=1, description="adaptive β: horizon in episodes (Ziegler et al.)")
    gamma: float = Field(1.0, ge=0, le=1, description="discount γ")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ")
    cliprange: float = Field(0.2, gt=0, description="PPO ratio clip ε (the lower one, ε_low, with cliprange_high)")
    cliprange_value: float = Field(0.2, gt=0, description="value clip ε_v")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    whiten_advantages: bool = Field(True, description="normalise advantages over the batch")
    reward_norm: bool = Field(False, description="normalise scores by their running mean and std")
    reward_clip: float | None = Field(None, gt=0, description="clip (normalised) scores to ±this (None: off)")
    missing_eos_penalty: float = Field(0.0, ge=0, description="subtracted from the score of responses with no EOS")
    ptx_coef: float = Field(0.0, ge=0, description="PPO-ptx: weight γ of the LM loss on ptx_data (0: off)")
    ptx_data: str | None = Field(None, description="PPO-ptx data: a .txt[.gz] corpus (e.g. austen) or SFT records")
    ptx_batch_size: int = Field(8, ge=1, description="PPO-ptx sequences per optimizer step, over all processes")
    ptx_max_length: int = Field(128, ge=2, description="PPO-ptx tokens per sequence")
    log_samples: int = Field(4, ge=0, description="responses written to samples.jsonl at each logged step")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters on the policy")
    output_dir: str = Field("runs/ppo", description="where checkpoints, metrics.jsonl and the model go")
    group_by_length: bool = Field(False, description="batch prompts of similar length")
    eval_every: int = Field(10, ge=0, description="held-out evaluation every N steps (0: only at the end)")
    log_every: int = Field(1, ge=1, description="write metrics every N steps")

    @model_validator(mode="after")
    def _consistent(self) -> PPOConfig:
        if self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of mini_batch_size")
        if self.ptx_coef > 0 and self.ptx_data is None:
            raise ValueError("ptx_coef > 0 needs ptx_data")
        estimator = ESTIMATORS[self.algo]
        if estimator.grouped and self.group_size < 2:
            raise ValueError(f"group_size {self.group_size}: algo {self.algo} compares G ≥ 2 samples per prompt")
        if self.dynamic_sampling and self.group_size < 2:
            raise ValueError("dynamic_sampling drops groups of equal scores: it needs group_size ≥ 2")
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of group_size {self.group_size}")
        critic_options = sorted(CRITIC_OPTIONS & self.model_fields_set)
        if not estimator.critic and critic_options:
            raise ValueError(f"{', '.join(critic_options)}: critic options, but algo {self.algo} has no critic")
        if self.load_reference is False and (self.kl_coef > 0 or self.kl_target is not None):
            raise ValueError("load_reference false: no KL can be measured; set kl_coef 0 and no kl_target")
        if self.algo == "a2c" and (self.importance_ratio == "sequence" or self.cliprange_high is not None):
            raise ValueError("importance_ratio, cliprange_high: a2c has no importance ratio to clip")
        return self

    @property
    def epochs_per_batch(self) -> int:
        return 1 if self.algo == "a2c" else self.ppo_epochs

    @property
    def on_policy_update(self) -> bool:
        """One optimizer step per rollout (one epoch, one minibatch) on the trainer's own samples, with no
        critic and no reference: the update's forward reads the very policy that sampled, so log π_old is its
        own detached log-probs and the rollout skips its policy forward (TRL's GRPO does so with
        num_iterations=1)."""
        return (
            self.epochs_per_batch == 1
            and self.mini_batch_size == self.batch_size
            and self.value_model is None
            and not self.uses_reference
            and self.engine == "hf"
        )

    @property
    def value_model(self) -> CriticKind | None:
        """The critic to build: `critic`, or None for a critic-free algo (no value model at all)."""
        return self.critic if ESTIMATORS[self.algo].critic else None

    @property
    def uses_reference(self) -> bool:
        """Whether a reference model is loaded (`load_reference`)."""
        if self.load_reference is not None:
            return self.load_reference
        return self.kl_coef > 0 or self.kl_target is not None or ESTIMATORS[self.algo].critic

    @property
    def shaping(self) -> RewardShaping:
        return RewardShaping(
            kl_estimator=self.kl_estimator,
            missing_eos_penalty=self.missing_eos_penalty,
            reward_norm=self.reward_norm,
            reward_clip=self.reward_clip,
            gamma=self.gamma,
            lam=self.lam,
            whiten_advantages=self.whiten_advantages,
            estimator=ESTIMATORS[self.algo].function,
            group_size=self.group_size,
            scale_rewards=self.scale_rewards,
            kl_in_reward=self.kl_placement == "reward",
            reference_free=not self.uses_reference,
            overlong_buffer=self.overlong_buffer,
            overlong_penalty=self.overlong_penalty,
            max_length=self.sampling.max_new_tokens,
            dynamic_sampling=self.dynamic_sampling,
            logprobs_in_update=self.on_policy_update,
        )


# Fields that only a critic uses: an error, not silently ignored, with a critic-free algo.
CRITIC_OPTIONS = {"critic", "value_learning_rate", "vf_coef", "cliprange_value", "lam", "whiten_advantages"}


class GRPOConfig(PPOConfig):
    """`rlhfkit grpo`: the PPO stage with GRPO's defaults (Shao et al. 2024): G samples per prompt, the group-
    normalised reward as every token's advantage, no critic, β·k3 KL in the loss, sequence-mean loss."""

    algo: Algo = Field("grpo", description=PPOConfig.model_fields["algo"].description)
    group_size: int = Field(4, ge=1, description=PPOConfig.model_fields["group_size"].description)
    kl_placement: Literal["reward", "loss"] = Field(
        "loss", description=PPOConfig.model_fields["kl_placement"].description
    )
    kl_coef: float = Field(0.04, ge=0, description=PPOConfig.model_fields["kl_coef"].description)
    loss_aggregation: LossAggregation = Field(
        "sequence_mean", description=PPOConfig.model_fields["loss_aggregation"].description
    )
    ppo_epochs: int = Field(1, ge=1, description=PPOConfig.model_fields["ppo_epochs"].description)
    output_dir: str = Field("runs/grpo", description=PPOConfig.model_fields["output_dir"].description)


class RLOOConfig(PPOConfig):
    """`rlhfkit rloo`: the PPO stage with RLOO's defaults (Ahmadian et al. 2024): G samples per prompt, the
    leave-one-out baseline, no critic, the KL in the reward, one pass per batch."""

    algo: Algo = Field("rloo", description=PPOConfig.model_fields["algo"].description)
    group_size: int = Field(4, ge=1, description=PPOConfig.model_fields["group_size"].description)
    ppo_epochs: int = Field(1, ge=1, description=PPOConfig.model_fields["ppo_epochs"].description)
    output_dir: str = Field("runs/rloo", description=PPOConfig.model_fields["output_dir"].description)


class PPOState:
    """What an update needs besides the rollout; built once per run."""

    def __init__(
        self,
        config: PPOConfig,
        accelerator: Accelerator,
        model: ActorCritic,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        pad_id: int,
        ptx: list[TokenSequence],
    ) -> None:
        self.config = config
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.pad_id = pad_id
        self.ptx = ptx
        self.ptx_order = (
            BatchOrder([len(s.input_ids) for s in ptx], config.ptx_batch_size, config.seed, False) if ptx else None
        )


def minibatches(config: PPOConfig, step: int, epoch: int) -> list[list[int]]:
    """The global rows of each minibatch of one epoch: a permutation seeded by (seed, step, epoch)."""
    generator = torch.Generator().manual_seed(hash((config.seed, step, epoch)) % (2**63))
    order = torch.randperm(config.batch_size, generator=generator).tolist()
    return chunks(order, config.mini_batch_size)


def ppo_losses(state: PPOState, rollout: Rollout, rows: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ of the token losses weighted as `loss_aggregation` says, per-token statistics) of some local rows."""
    config = state.config
    sequences, device = [rollout.sequences[i] for i in rows], state.accelerator.device
    # G replies to a prompt: read it once (not with a separate critic, which reads full rows)
    shared = shared_prompts(sequences, state.pad_id) if config.value_model in (None, "shared") else None
    if shared is not None:
        shared = shared.to(device)
    batch = batch_on(sequences, state.pad_id, device) if shared is None else shared.batch
    on_policy = rollout.logprobs is None  # the rollout left log π_old to this forward (`on_policy_update`)
    logprobs, values, token_entropy = state.model(
        batch.input_ids, batch.attention_mask, batch.loss_mask[:, 1:].bool(), with_entropy=on_policy, shared=shared
    )
    old_values, advantages, returns, ref_logprobs = (
        gather_tokens(t, rows, rollout.mask).to(device)
        for t in (rollout.values, rollout.advantages, rollout.returns, rollout.ref_logprobs)
    )
    old_logprobs = (
        logprobs.detach()
        if rollout.logprobs is None
        else gather_tokens(rollout.logprobs, rows, rollout.mask).to(device)
    )
    lengths = rollout.mask[rows].sum(1).long()
    log_ratio = logprobs - old_logprobs
    if config.importance_ratio == "sequence":
        log_ratio = sequence_log_ratio(log_ratio, lengths)
    if config.algo == "a2c":
        loss, stats = policy_gradient(logprobs, advantages)
    else:
        loss, stats = clipped_surrogate(log_ratio, advantages, config.cliprange, config.cliprange_high)
    if config.tis_cap is not None and rollout.engine_logprobs is not None:  # the engine sampled from π_engine ≠ π_old
        engine_logprobs = gather_tokens(rollout.engine_logprobs, rows, rollout.mask).to(device)
        tis = truncated_importance_weight(old_logprobs, engine_logprobs, config.tis_cap)
        loss, stats = tis * loss, stats | {"tis_weight": tis}
    stats = {f"ppo/{k}": v for k, v in stats.items()} | {"ppo/policy_loss": loss.detach()}
    if token_entropy is not None:  # the rollout read no entropy: this forward's is the sampling policy's
        stats["policy/entropy"] = token_entropy
    if values is not None:
        clip = None if config.algo == "a2c" else config.cliprange_value
        value_loss, value_stats = clipped_value_loss(values, old_values, returns, clip)
        loss = loss + config.vf_coef * value_loss
        stats |= {f"value/{k}": v for k, v in value_stats.items()} | {"value/loss": value_loss.detach()}
    if config.kl_placement == "loss" and rollout.kl_coef > 0:  # GRPO: β·k3, unbiased and ≥ 0, in the loss
        kl_loss = kl_estimate(logprobs, ref_logprobs, "k3")
        loss = loss + rollout.kl_coef * kl_loss
        stats["ppo/kl_loss"] = kl_loss.detach()
    row_weights, _ = loss_normaliser(lengths, config.loss_aggregation, config.sampling.max_new_tokens)
    return (loss * row_weights.to(device).repeat_interleave(lengths.to(device))).sum(), stats


def ptx_loss(state: PPOState, sequences: list[TokenSequence]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ NLL, trained tokens) of a pretraining micro-batch, at temperature 1."""
    batch = batch_on(sequences, state.pad_id, state.accelerator.device)
    logprobs, _, _ = state.model(batch.input_ids, batch.attention_mask, batch.loss_mask[:, 1:].bool(), lm_only=True)
    return -logprobs.sum(), torch.tensor(float(logprobs.numel()))


def optimizer_update(
    state: PPOState, rollout: Rollout, members: list[int], update_index: int, metrics: StepMetrics
) -> None:
    """One optimizer step on the global minibatch `members` (rows of the global batch)."""
    accelerator, config = state.accelerator, state.config
    rank, world = accelerator.process_index, accelerator.num_processes
    local = [g // world for g in members if g % world == rank]  # process r sampled rows r, r + W, ...
    lengths = rollout.mask[local].sum(1)
    _, items = loss_normaliser(lengths, config.loss_aggregation, config.sampling.max_new_tokens)
    normalise = GlobalMean.over(accelerator, items)  # tokens, sequences, or sequences × max length
    # a process with no row in this minibatch still takes part in DDP's gradient sync, with weight 0
    weight = 1.0 if local else 0.0

    def ppo_micro_loss(part: list[int]) -> torch.Tensor:
        loss, stats = ppo_losses(state, rollout, part)
        if local:
            metrics.add(stats)
        return normalise(weight * loss)

    micro_losses = [partial(ppo_micro_loss, part) for part in chunks(local or [0], config.micro_batch_size)]
    if state.ptx_order is not None:
        ptx_rows = shard(state.ptx_order.global_batch(update_index), rank, world)
        ptx_tokens = GlobalMean.over(accelerator, float(sum(sum(state.ptx[i].loss_mask[1:]) for i in ptx_rows)))

        def ptx_micro_loss(part: list[int]) -> torch.Tensor:
            nll, count = ptx_loss(state, [state.ptx[i] for i in part])
            metrics.add_total("ptx/loss", nll.detach(), count)
            return ptx_tokens(config.ptx_coef * nll)

        # first: DDP syncs on the last micro-batch, a PPO one, which uses every weight
        micro_losses = [
            partial(ptx_micro_loss, part) for part in chunks(ptx_rows, config.micro_batch_size)
        ] + micro_losses
    grad_norm = optimizer_step(
        accelerator, state.model, state.optimizer, state.scheduler, config.max_grad_norm, micro_losses
    )
    metrics.add_total("train/grad_norm", grad_norm / world, 1.0 / world)  # the same on every process


def ppo_update(state: PPOState, rollout: Rollout, step: int) -> dict[str, float]:
    """`epochs_per_batch` passes over the batch in minibatches; the metrics averaged over all of them. Rows
    dropped by dynamic sampling leave their minibatches; a minibatch left empty is no optimizer step."""
    config = state.config
    metrics = StepMetrics()
    updates_per_epoch = config.batch_size // config.mini_batch_size
    for epoch in range(config.epochs_per_batch):
        for j, drawn in enumerate(minibatches(config, step, epoch)):
            update_index = ((step - 1) * config.epochs_per_batch + epoch) * updates_per_epoch + j
            if members := [g for g in drawn if g not in rollout.dropped]:
                optimizer_update(state, rollout, members, update_index, metrics)
    return metrics.mean(state.accelerator) | {"train/lr": float(state.scheduler.get_last_lr()[0])}


@dataclass(frozen=True)
class RolloutMaker:
    """Everything a rollout needs besides its prompts: `make(prompts, rows, step)` for this process's rows."""

    config: PPOConfig
    accelerator: Accelerator
    model: ActorCritic  # unwrapped: sampling and scoring need no gradient sync
    reference: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    reward: CombinedReward
    kl: KLController
    moments: RunningMoments
    gold: GoldFunction | None
    engine: RolloutEngine | None  # None: transformers' generate on the policy

    def make(
        self, prompt_set: PromptSet, picked: list[int], rows: list[int], step: int, update_statistics: bool = True
    ) -> tuple[Rollout, dict[str, float]]:
        """The rollout of prompts `picked` (indices into `prompt_set`) as global batch rows `rows`; a reward
        function's exception names the prompt file's row."""
        config = self.config
        prompts, answers = [prompt_set.prompts[i] for i in picked], [prompt_set.answers[i] for i in picked]
        try:
            return collect_rollout(
                self.accelerator, self.model, self.reference, self.tokenizer, prompts, rows,
                row_seeds(config.seed, step, rows), self.reward, self.kl, self.moments, config.shaping,
                config.sampling, config.micro_batch_size, self.gold, update_statistics, answers, self.engine,
            )  # fmt: skip
        except ScoringError as error:
            raise error.at([prompt_set.locations[i] for i in picked]) from error.__cause__

    def evaluate(self, prompt_set: PromptSet) -> dict[str, float]:
        """Rollout metrics on held-out prompts, with the same sampling noise at every evaluation; nothing trains."""
        accelerator = self.accelerator
        rows = shard(list(range(len(prompt_set.prompts))), accelerator.process_index, accelerator.num_processes)
        _, metrics = self.make(prompt_set, rows, rows, step=-1, update_statistics=False)
        return {f"eval/{key}": value for key, value in metrics.items() if not key.startswith(("ppo/", "value/"))}


def write_samples(path: Path, step: int, rollout: Rollout, count: int) -> None:
    with path.open("a") as f:
        rows = zip(rollout.prompts, rollout.texts, rollout.scores.tolist(), strict=True)
        for prompt, text, score in list(rows)[:count]:
            f.write(json.dumps({"step": step, "prompt": text_as_json(prompt), "response": text, "score": score}) + "\n")


def train_ppo(
    config: PPOConfig,
    accelerator: Accelerator,
    model: ActorCritic,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: PromptSet,
    eval_prompts: PromptSet | None,
    reward: CombinedReward,
    ptx: list[TokenSequence],
    engine: RolloutEngine | None = None,
) -> TrainResult:
    """The PPO loop of the module docstring; returns the last step's metrics."""
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(config.seed)
    group = config.group_size  # rows g·G ... g·G + G - 1 of a global batch sample prompt g
    order = BatchOrder(
        [len(str(p)) for p in prompts.prompts], config.batch_size // group, config.seed, config.group_by_length
    )
    steps = total_steps(config, order)
    updates = steps * config.epochs_per_batch * (config.batch_size // config.mini_batch_size)
    kl, moments = KLController(config.kl_coef, config.kl_target, config.kl_horizon), RunningMoments()
    run = TrainingRun(
        accelerator,
        config,
        model,
        steps,
        optimizer_steps=updates,
        learning_rates=value_learning_rates(model, config),
        checkpointed=(kl, moments),
    )
    run.model.train()  # from_pretrained leaves eval mode; dropout is off either way
    state = PPOState(config, accelerator, run.model, run.optimizer, run.scheduler, tokenizer.pad_token_id, ptx)
    gold = gold_function(config.gold) if config.gold else None
    rollouts = RolloutMaker(config, accelerator, model, reference, tokenizer, reward, kl, moments, gold, engine)
    samples_file = Path(config.output_dir) / "samples.jsonl"
    if accelerator.is_main_process:
        trim_rows(samples_file, before=run.start + 1)  # a resumed run writes the later steps' samples again
    rows = shard(list(range(config.batch_size)), rank, world)
    latest: list[Rollout] = []  # the last step's rollout, for samples.jsonl

    def train_step(step: int) -> dict[str, float]:
        """Sample and score a global batch, then the PPO updates on it."""
        started = time.perf_counter()
        batch = order.global_batch(step - 1)
        rollout, metrics = rollouts.make(prompts, [batch[r // group] for r in rows], rows, step)
        if config.uses_reference:
            metrics["kl/beta"] = kl.beta
            kl.update(metrics["kl/penalty"], config.batch_size)
        rollout_seconds = time.perf_counter() - started
        metrics |= ppo_update(state, rollout, step)
        seconds = time.perf_counter() - started
        latest[:] = [rollout]
        return metrics | {
            "perf/episodes_per_s": config.batch_size / seconds,
            "perf/tokens_per_s": config.batch_size * metrics["response/length"] / seconds,
            "perf/rollout_share": rollout_seconds / seconds,
        }

    def write_latest_samples(step: int) -> None:
        if accelerator.is_main_process and config.log_samples:
            write_samples(samples_file, step, latest[0], config.log_samples)

    return run.loop(
        "ppo",
        train_step,
        losses=["ppo/policy_loss"] + (["value/loss"] if ESTIMATORS[config.algo].critic else []),
        describe=lambda m: f"{config.algo} score {m['reward/score']:.3f} kl {m.get('kl/k1', 0.0):.2f}",
        # at step 0: the starting policy, so every run shows what training changed
        evaluate=(lambda: rollouts.evaluate(eval_prompts)) if eval_prompts else None,
        report=lambda m: f"held-out score {m['eval/reward/score']:.3f} kl {m.get('eval/kl/k1', 0.0):.2f}",
        on_log=write_latest_samples,
    )


def value_learning_rates(model: ActorCritic, config: PPOConfig) -> dict[torch.nn.Module, float]:
    """The critic's own learning rate, if set: a new value head needs larger steps than a pretrained policy."""
    if config.value_learning_rate is None:
        return {}
    critic = torch.nn.ModuleList([m for m in (model.value_head, model.critic) if m is not None])
    return {critic: config.value_learning_rate}


def load_ptx(config: PPOConfig, tokenizer: PreTrainedTokenizerBase) -> list[TokenSequence]:
    """PPO-ptx sequences: blocks of a text corpus, or SFT records (loss on their responses)."""
    if config.ptx_coef == 0 or config.ptx_data is None:
        return []
    path = assets.resolve(config.ptx_data)
    if path.endswith((".txt", ".txt.gz")):
        return blocks(tokenizer, read_paragraphs(Path(path)), config.ptx_max_length)
    return [tokenize_sft(tokenizer, r, config.ptx_max_length) for r in load_records(path, "sft")]


def count_long_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Text], limit: int | None) -> int:
    """How many prompts `sample` will cut to `limit` tokens."""
    lengths = (len(tokenizer(render_prompt(tokenizer, p))["input_ids"]) for p in prompts)
    return 0 if limit is None else sum(n > limit for n in lengths)


def reward_model_source(config: PPOConfig) -> str | None:
    """The first reward-model directory among the reward terms (what critic=reward starts from)."""
    return next((r.source for r in config.rewards if is_reward_model(r.source)), None)


def ppo(config: PPOConfig) -> Path:
    """Tune `config.model` against `config.rewards`; returns the directory of the saved policy."""
    if config.prompts is None:
        raise ConfigError("prompts: no prompts given; set prompts=PATH (prompt records) or prompts=demo-prompts")
    if not config.rewards:
        raise ConfigError("rewards: no reward given; e.g. --set 'rewards=[{source: runs/reward}]' or source: vader")
    tokenizer = load_tokenizer(config.model)
    check_engine(config.engine, config.model, tokenizer)  # before start_run writes to output_dir
    accelerator = start_run(config, config)
    prompts = read_prompt_set(config.prompts)
    eval_prompts = read_prompt_set(config.eval_prompts, config.eval_size) if config.eval_prompts else None
    set_seed(config.seed)  # a pad token added to the vocabulary gets a seeded embedding
    policy = load_model(config.model, tokenizer, config.lora)
    limit = prompt_limit(policy, config.sampling.max_new_tokens)
    every_prompt = prompts.prompts + (eval_prompts.prompts if eval_prompts else [])
    if long := count_long_prompts(tokenizer, every_prompt, limit):
        accelerator.print(
            f"[data] {long} prompts longer than {limit} tokens (context - max_new_tokens) lose their start"
        )
    model = build_actor_critic(
        policy, config.model, tokenizer, config.value_model, reward_model_source(config), config.sampling.temperature
    )
    disable_dropout(model)  # log-probabilities must not depend on a dropout draw: ratio 1 before any update
    model.to(accelerator.device)
    reference = None
    if config.uses_reference and (not config.lora.enabled or config.ref_model is not None):
        reference = load_model(config.ref_model or config.model, tokenizer).to(accelerator.device).eval()
        reference.requires_grad_(False)
    reward = CombinedReward(config.rewards, accelerator.device)
    for prompt_set in (prompts, eval_prompts) if eval_prompts else (prompts,):
        reward.check_answers(prompt_set.answers, prompt_set.locations)  # before training starts
    ptx = load_ptx(config, tokenizer)
    engine = rollout_engine(config.engine, policy, config.model, tokenizer)
    terms = " + ".join(f"{r.weight:g}·{name}" for r, name in zip(config.rewards, reward.names, strict=True))
    accelerator.print(
        f"{config.algo} on {config.model}: {len(prompts.prompts)} prompts, {config.batch_size} episodes per step "
        f"({config.group_size} per prompt), critic {config.value_model}, "
        f"reference {config.uses_reference}, reward {terms}"
    )
    result = train_ppo(config, accelerator, model, reference, tokenizer, prompts, eval_prompts, reward, ptx, engine)
    return finish_run(
        accelerator, Path(config.output_dir), result.summary, pretrained_saver(accelerator, policy, tokenizer)
    )
