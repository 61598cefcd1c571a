"""`rlhfkit ppo`: the RL stage of InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, section 3.5).

Each step: sample one response per prompt for a global batch of prompts (`rollout.py`: the reward on
the last token, a per-token KL penalty to the frozen reference, GAE, whitened advantages), then
`ppo_epochs` passes over the batch in shuffled minibatches, each one optimizer step on

    L = PPO clipped surrogate + vf_coef · clipped value loss  [+ ptx_coef · LM loss on a pretraining batch]

(PPO-ptx, InstructGPT eq. 2). `algo: a2c` makes one pass of the plain policy gradient instead.

Losses are token means over the global minibatch (`training.reduction.GlobalMean`), so two processes
reproduce one. A
minibatch is a seeded draw of global rows; each process trains on the drawn rows it sampled.
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
from rlhfkit.data.records import Text, load_records, read_prompts
from rlhfkit.data.tokenize import tokenize_sft
from rlhfkit.generation.engine import ENGINE_HELP, EngineKind, RolloutEngine, check_engine, rollout_engine
from rlhfkit.generation.sampling import SamplingSettings, prompt_limit, render_prompt
from rlhfkit.models.loading import LoraSettings, disable_dropout, load_model, load_tokenizer
from rlhfkit.models.reward_ensemble import is_reward_model
from rlhfkit.ppo.advantages import KLEstimator
from rlhfkit.ppo.controllers import KLController, RunningMoments
from rlhfkit.ppo.losses import clipped_surrogate, clipped_value_loss, policy_gradient, truncated_importance_weight
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
from rlhfkit.scoring.sources import CombinedReward, RewardSource
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
    algo: Literal["ppo", "a2c"] = Field("ppo", description="ppo (clipped, several epochs) or a2c (one plain pass)")
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=32, temperature=1.0),
        description="rollout sampling; its temperature also scales the logits of every log-probability",
    )
    engine: EngineKind = Field("hf", description=ENGINE_HELP)
    tis_cap: float | None = Field(
        None, gt=0, description="truncated importance sampling: weight min(π_old/π_engine, C) (vllm; None: off)"
    )
    batch_size: int = Field(64, ge=1, description="episodes (prompts) per PPO step, over all processes")
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
    cliprange: float = Field(0.2, gt=0, description="PPO ratio clip ε")
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
        return self

    @property
    def epochs_per_batch(self) -> int:
        return 1 if self.algo == "a2c" else self.ppo_epochs

    @property
    def shaping(self) -> RewardShaping:
        return RewardShaping(
            self.kl_estimator,
            self.missing_eos_penalty,
            self.reward_norm,
            self.reward_clip,
            self.gamma,
            self.lam,
            self.whiten_advantages,
        )


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
    """(Σ of token losses, per-token statistics) of some local rows of the rollout."""
    config = state.config
    batch = batch_on([rollout.sequences[i] for i in rows], state.pad_id, state.accelerator.device)
    logprobs, values, _ = state.model(batch.input_ids, batch.attention_mask, batch.loss_mask[:, 1:].bool())
    device = logprobs.device
    old_logprobs, old_values, advantages, returns = (
        gather_tokens(t, rows, rollout.mask).to(device)
        for t in (rollout.logprobs, rollout.values, rollout.advantages, rollout.returns)
    )
    if config.algo == "a2c":
        policy_loss, stats = policy_gradient(logprobs, advantages)
        value_loss, value_stats = clipped_value_loss(values, old_values, returns, None)
    else:
        policy_loss, stats = clipped_surrogate(logprobs, old_logprobs, advantages, config.cliprange)
        value_loss, value_stats = clipped_value_loss(values, old_values, returns, config.cliprange_value)
    if config.tis_cap is not None and rollout.engine_logprobs is not None:
        engine_logprobs = gather_tokens(rollout.engine_logprobs, rows, rollout.mask).to(device)
        tis = truncated_importance_weight(old_logprobs, engine_logprobs, config.tis_cap)
        policy_loss, stats = tis * policy_loss, stats | {"tis_weight": tis}
    loss = policy_loss + config.vf_coef * value_loss
    stats = {f"ppo/{k}": v for k, v in stats.items()} | {f"value/{k}": v for k, v in value_stats.items()}
    stats |= {"ppo/policy_loss": policy_loss.detach(), "value/loss": value_loss.detach()}
    return loss.sum(), stats


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
    tokens = GlobalMean.over(accelerator, float(rollout.mask[local].sum()))  # token-level
    # a process with no row in this minibatch still takes part in DDP's gradient sync, with weight 0
    weight = 1.0 if local else 0.0

    def ppo_micro_loss(part: list[int]) -> torch.Tensor:
        loss, stats = ppo_losses(state, rollout, part)
        if local:
            metrics.add(stats)
        return tokens(weight * loss)

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
    """`epochs_per_batch` passes over the batch in minibatches; the metrics averaged over all of them."""
    config = state.config
    metrics = StepMetrics()
    updates_per_epoch = config.batch_size // config.mini_batch_size
    for epoch in range(config.epochs_per_batch):
        for j, members in enumerate(minibatches(config, step, epoch)):
            update_index = ((step - 1) * config.epochs_per_batch + epoch) * updates_per_epoch + j
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
        self, prompts: list[Text], rows: list[int], step: int, update_statistics: bool = True
    ) -> tuple[Rollout, dict[str, float]]:
        config = self.config
        return collect_rollout(
            self.accelerator, self.model, self.reference, self.tokenizer, prompts, row_seeds(config.seed, step, rows),
            self.reward, self.kl, self.moments, config.shaping, config.sampling, config.micro_batch_size, self.gold,
            update_statistics, self.engine,
        )  # fmt: skip

    def evaluate(self, prompts: list[Text]) -> dict[str, float]:
        """Rollout metrics on held-out prompts, with the same sampling noise at every evaluation; nothing trains."""
        rows = shard(list(range(len(prompts))), self.accelerator.process_index, self.accelerator.num_processes)
        _, metrics = self.make([prompts[i] for i in rows], rows, step=-1, update_statistics=False)
        return {f"eval/{key}": value for key, value in metrics.items() if not key.startswith(("ppo/", "value/"))}


def write_samples(path: Path, step: int, rollout: Rollout, count: int) -> None:
    with path.open("a") as f:
        rows = zip(rollout.prompts, rollout.texts, rollout.scores.tolist(), strict=True)
        for prompt, text, score in list(rows)[:count]:
            f.write(json.dumps({"step": step, "prompt": prompt, "response": text, "score": score}) + "\n")


def train_ppo(
    config: PPOConfig,
    accelerator: Accelerator,
    model: ActorCritic,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Text],
    eval_prompts: list[Text],
    reward: CombinedReward,
    ptx: list[TokenSequence],
    engine: RolloutEngine | None = None,
) -> TrainResult:
    """The PPO loop of the module docstring; returns the last step's metrics."""
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(config.seed)
    order = BatchOrder([len(str(p)) for p in prompts], config.batch_size, config.seed, config.group_by_length)
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
    run.model.train()  # from_pretrained leaves eval mode; dropout is off either way, so this only skips entropy
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
        rollout, metrics = rollouts.make([prompts[batch[r]] for r in rows], rows, step)
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
        losses=["ppo/policy_loss", "value/loss"],
        describe=lambda m: f"ppo score {m['reward/score']:.3f} kl {m['kl/k1']:.2f}",
        # at step 0: the starting policy, so every run shows what training changed
        evaluate=(lambda: rollouts.evaluate(eval_prompts)) if eval_prompts else None,
        report=lambda m: f"held-out score {m['eval/reward/score']:.3f} kl {m['eval/kl/k1']:.2f}",
        on_log=write_latest_samples,
    )


def value_learning_rates(model: ActorCritic, config: PPOConfig) -> dict[torch.nn.Module, float]:
    """The critic's own learning rate, if set: a new value head needs larger steps than a pretrained policy."""
    if config.value_learning_rate is None:
        return {}
    critic = torch.nn.ModuleList([model.value_head] + ([model.critic] if model.critic is not None else []))
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
    prompts = read_prompts(config.prompts)
    eval_prompts = read_prompts(config.eval_prompts, config.eval_size) if config.eval_prompts else []
    set_seed(config.seed)  # a pad token added to the vocabulary gets a seeded embedding
    policy = load_model(config.model, tokenizer, config.lora)
    limit = prompt_limit(policy, config.sampling.max_new_tokens)
    if long := count_long_prompts(tokenizer, prompts + eval_prompts, limit):
        accelerator.print(
            f"[data] {long} prompts longer than {limit} tokens (context - max_new_tokens) lose their start"
        )
    model = build_actor_critic(
        policy, config.model, tokenizer, config.critic, reward_model_source(config), config.sampling.temperature
    )
    disable_dropout(model)  # log-probabilities must not depend on a dropout draw: ratio 1 before any update
    model.to(accelerator.device)
    reference = None
    if not config.lora.enabled or config.ref_model is not None:
        reference = load_model(config.ref_model or config.model, tokenizer).to(accelerator.device).eval()
        reference.requires_grad_(False)
    reward = CombinedReward(config.rewards, accelerator.device)
    ptx = load_ptx(config, tokenizer)
    engine = rollout_engine(config.engine, policy, config.model, tokenizer)
    terms = " + ".join(f"{r.weight:g}·{name}" for r, name in zip(config.rewards, reward.names, strict=True))
    accelerator.print(
        f"{config.algo} on {config.model}: {len(prompts)} prompts, {config.batch_size} episodes per step, "
        f"critic {config.critic}, reward {terms}"
    )
    result = train_ppo(config, accelerator, model, reference, tokenizer, prompts, eval_prompts, reward, ptx, engine)
    return finish_run(
        accelerator, Path(config.output_dir), result.summary, pretrained_saver(accelerator, policy, tokenizer)
    )
