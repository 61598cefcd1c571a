"""`rlhfkit dpo`: learn straight from preferences, with no reward model and no sampling loop.

The pipeline: tokenize the judgements (pairs, rankings, ratings, edits, or thumbs up/down for KTO), compute
log π_ref(y|x) of every response once (cached on disk, see `reference.py`), then optimise one of the losses
of `losses.LOSSES` on policy-minus-reference log-ratios, the chosen and rejected responses of each
micro-batch in one forward pass. Optionally RPO's NLL term on the chosen responses keeps their likelihood up.

Under `accelerate launch` (DDP) the objective is the mean over the global batch: each process sums its
per-example losses, scaled by world size / global batch size (DDP then averages gradients over processes),
so two processes reproduce one process with the same global batch. Metrics are per-example values summed
over all micro-batches and processes, then averaged: whole-step values, not the last micro-batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import Field, field_validator
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit import assets
from rlhfkit.config import ConfigError
from rlhfkit.data.convert import split_by_prompt
from rlhfkit.data.readers import DataError
from rlhfkit.data.records import load_feedback
from rlhfkit.dpo.data import KINDS, Example, Kind, build_examples, with_reference
from rlhfkit.dpo.losses import LOSSES, UNPAIRED_LOSSES, chosen_nll
from rlhfkit.dpo.reference import SequenceLogprobs, default_cache_dir, reference_logps, score
from rlhfkit.models.loading import LoraSettings, disable_dropout, load_model, load_tokenizer, usable_length
from rlhfkit.training.batching import BatchOrder, chunks, shard
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.metrics import Metrics, StepMetrics
from rlhfkit.training.reduction import GlobalMean
from rlhfkit.training.run_loop import TrainingRun, TrainResult, total_steps
from rlhfkit.training.runtime import finish_run, pretrained_saver, start_run


class DPOConfig(TrainSettings):
    """Preference optimisation without a reward model: DPO, cDPO, IPO, SLiC's hinge, KTO."""

    model: str = Field("tiny-austen", description="policy to tune (usually the SFT model): name, path or hub id")
    ref_model: str | None = Field(None, description="reference model (default: the policy's starting weights)")
    data: str | None = Field(None, description="judgements: JSONL/JSON/Parquet file or save_to_disk dir (required)")
    data_kind: Kind | None = Field(None, description="record kind of data/eval_data (default: from the fields)")
    eval_data: str | None = Field(None, description="held-out judgements (default: a split of `data` by prompt)")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of prompts held out when eval_data is unset")
    max_length: int = Field(256, ge=2, description="tokens per prompt + response; the prompt loses its start first")
    loss: str = Field("sigmoid", description=f"preference loss: {', '.join(LOSSES)}")
    beta: float = Field(0.1, gt=0, description="β: strength of the KL anchor to the reference (IPO's τ)")
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="cdpo: probability ε that a label is flipped")
    rpo_alpha: float = Field(0.0, ge=0, description="weight of the chosen responses' per-token NLL (RPO); 0: off")
    disable_dropout: bool = Field(True, description="no dropout in the policy, so it scores as the reference did")
    ref_cache_dir: str | None = Field(None, description="reference log-prob cache ($RLHFKIT_CACHE/ref-logps)")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters")
    output_dir: str = Field("runs/dpo", description="where checkpoints, metrics.jsonl and the model go")
    learning_rate: float = Field(1e-5, gt=0, description="peak AdamW learning rate")
    batch_size: int = Field(16, ge=1, description="pairs (KTO: judged responses) per optimizer step, all processes")
    micro_batch_size: int = Field(16, ge=1, description="pairs (KTO: responses) per forward pass on one process")
    eval_every: int = Field(50, ge=0, description="held-out evaluation every N steps (0: only at the end)")
    log_every: int = Field(1, ge=1, description="write metrics every N steps")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
        return name


@dataclass(frozen=True)
class Objective:
    """The loss of `config.loss` with its scalars, on a policy that scores padded batches."""

    loss: str
    beta: float
    label_smoothing: float
    rpo_alpha: float
    pad_id: int
    device: torch.device

    @property
    def unpaired(self) -> bool:
        return self.loss in UNPAIRED_LOSSES

    def micro_batch(self, policy: nn.Module, examples: list[Example], z0: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """Σ of the micro-batch's per-example losses (the caller divides by the global batch size) and
        per-example metrics. Chosen and rejected responses go through the policy in one forward pass."""
        chosen = [r for e in examples for r in e.responses if r.preferred]
        rejected = [r for e in examples for r in e.responses if not r.preferred]
        logps, tokens = score(policy, [r.tokens for r in chosen + rejected], self.pad_id, self.device)  # (n_c + n_r,)
        ref = torch.tensor([r.ref_logp for r in chosen + rejected], device=self.device)
        logratios = logps - ref
        n = len(chosen)
        losses, metrics = LOSSES[self.loss](
            logratios[:n], logratios[n:], beta=self.beta, label_smoothing=self.label_smoothing, reference_point=z0
        )
        nll = chosen_nll(logps[:n], tokens[:n])
        # KTO lists the desirable responses' losses first, so the NLL of the chosen lines up in both cases
        per_example = losses + self.rpo_alpha * F.pad(nll, (0, len(losses) - n))
        metrics = {
            **metrics,
            "dpo/loss": per_example.detach(),
            "dpo/logps/chosen": logps[:n].detach(),
            "dpo/logps/rejected": logps[n:].detach(),
            "dpo/nll/chosen": nll.detach(),
        }
        return per_example.sum(), metrics

    def reference_point(self, policy: nn.Module, parts: list[list[Example]], accelerator: Accelerator) -> torch.Tensor:
        """KTO's z₀ = max(0, mean log-ratio of the mismatched responses over the global batch), no gradient;
        0 for the paired losses. (Ethayarajh et al. 2024, section 4.1.)"""
        if not self.unpaired:
            return torch.zeros((), device=self.device)
        total = torch.zeros(2, device=self.device)  # Σ log-ratio, count
        with torch.no_grad():
            for part in parts:
                mismatched = [e.mismatched for e in part if e.mismatched is not None]
                logps, _ = score(policy, [r.tokens for r in mismatched], self.pad_id, self.device)
                ref = torch.tensor([r.ref_logp for r in mismatched], device=self.device)
                total += torch.stack([(logps - ref).sum(), torch.tensor(float(len(mismatched)), device=self.device)])
        total = accelerator.reduce(total, reduction="sum")
        return (total[0] / total[1].clamp(min=1)).clamp(min=0)


def optimizer_step(run: TrainingRun, objective: Objective, parts: list[list[Example]]) -> dict[str, float]:
    """One optimizer step on the global batch's mean loss over this process's micro-batches; its metrics."""
    accelerator = run.accelerator
    mean = GlobalMean.over(accelerator, sum(map(len, parts)))  # sequence-level: examples
    with accelerator.autocast():
        z0 = objective.reference_point(accelerator.unwrap_model(run.model), parts, accelerator)
    step = StepMetrics()

    def micro_loss(part: list[Example]) -> torch.Tensor:
        loss_sum, metrics = objective.micro_batch(run.model, part, z0)
        step.add(metrics)
        return mean(loss_sum)

    grad_norm = run.optimizer_step([partial(micro_loss, part) for part in parts])
    return step.mean(accelerator) | {"train/grad_norm": grad_norm}


def evaluate(
    accelerator: Accelerator, policy: nn.Module, objective: Objective, examples: list[Example], micro: int
) -> dict[str, float]:
    """The training metrics on held-out examples (split over processes), keys prefixed `eval/`."""
    model = accelerator.unwrap_model(policy)
    mine = shard(list(range(len(examples))), accelerator.process_index, accelerator.num_processes)
    parts = [[examples[i] for i in part] for part in chunks(mine, micro)]
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        z0 = objective.reference_point(model, parts, accelerator)
        step = StepMetrics()
        for part in parts:
            step.add(objective.micro_batch(model, part, z0)[1])
    model.train()
    return {f"eval/{key}": value for key, value in step.mean(accelerator).items()}


def train_on_preferences(
    model: PreTrainedModel,
    pad_id: int,
    train: list[Example],
    held_out: list[Example],
    config: DPOConfig,
    accelerator: Accelerator,
) -> TrainResult:
    """Optimise `config.loss` on examples whose reference log-probabilities are filled in."""
    world = accelerator.num_processes
    if 0 < len(held_out) < world:
        raise ValueError(f"{len(held_out)} held-out examples for {world} processes: each needs at least one")
    set_seed(config.seed)
    order = BatchOrder([e.length for e in train], config.batch_size, config.seed, config.group_by_length)
    run = TrainingRun(accelerator, config, SequenceLogprobs(model), total_steps(config, order))
    objective = Objective(
        config.loss, config.beta, config.label_smoothing, config.rpo_alpha, pad_id, accelerator.device
    )
    micro = config.micro_batch_size

    def train_step(step: int) -> dict[str, float]:
        mine = shard(order.global_batch(step - 1), accelerator.process_index, world)
        parts = [[train[i] for i in part] for part in chunks(mine, micro)]
        metrics = optimizer_step(run, objective, parts)
        return metrics | {"train/lr": run.lr, "perf/examples_per_s": run.rate(config.batch_size)}

    return run.loop(
        "dpo",
        train_step,
        losses=["dpo/loss"],
        describe=lambda m: f"{config.loss} {m['dpo/loss']:.3f} acc {m['dpo/accuracy']:.2f}",
        # at step 0 the policy is the reference: loss log 2 for sigmoid, accuracy of ties
        evaluate=(lambda: evaluate(accelerator, run.model, objective, held_out, micro)) if held_out else None,
        report=lambda m: f"eval loss {m['eval/dpo/loss']:.4f} accuracy {m['eval/dpo/accuracy']:.3f}",
    )


def load_examples(
    config: DPOConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[Example], list[Example], list[str]]:
    """(train, held-out, notes): records read, split by prompt unless eval_data is given, then tokenized."""
    if config.data is None:
        raise ConfigError("dpo: `data` is required (a file of judgements)")
    kind, records = load_feedback(assets.resolve(config.data), config.data_kind, KINDS)
    held_kind = kind
    if config.eval_data is not None:
        held_kind, held = load_feedback(assets.resolve(config.eval_data), config.data_kind, KINDS)
    else:
        records, held = split_by_prompt(records, config.eval_fraction, config.seed)
    unpaired = config.loss in UNPAIRED_LOSSES
    max_length = usable_length(config.model, config.max_length)
    train, notes = build_examples(records, kind, unpaired, tokenizer, max_length)
    held_out, held_notes = build_examples(held, held_kind, unpaired, tokenizer, max_length)
    if not train:
        raise DataError(f"{config.data}: no usable training examples ({'; '.join(notes) or 'empty'})")
    return train, held_out, notes + [f"held out: {n}" for n in held_notes]


def dpo(config: DPOConfig) -> Path:
    """Tune `config.model` on the judgements in `config.data`; returns the directory of the saved model."""
    if config.data is None:
        raise ConfigError("data: no preference data given; set data=PATH (JSONL, JSON, Parquet or a dataset dir)")
    accelerator = start_run(config, config)
    tokenizer = load_tokenizer(config.model)
    train, held_out, notes = load_examples(config, tokenizer)
    for note in notes:
        accelerator.print(f"[data] {note}")
    set_seed(config.seed)  # a pad token added to the vocabulary gets a seeded embedding: the same reference each run
    model = load_model(config.model, tokenizer, config.lora)
    if config.disable_dropout:
        disable_dropout(model)
    reference = model if config.ref_model is None else load_model(config.ref_model, tokenizer)
    responses = [r.tokens for e in train + held_out for r in e.all_responses]
    cache_dir = Path(config.ref_cache_dir) if config.ref_cache_dir else default_cache_dir()
    logps, cache_file, hit = reference_logps(
        reference, responses, tokenizer.pad_token_id, 2 * config.micro_batch_size, accelerator, cache_dir
    )
    del reference  # a separate reference model is not needed any more
    done = "read from" if hit else "computed and cached in"
    accelerator.print(f"reference log-probs of {len(responses)} responses {done} {cache_file}")
    n_train = sum(len(e.all_responses) for e in train)
    train, held_out = (
        with_reference(train, logps[:n_train].tolist()),
        with_reference(held_out, logps[n_train:].tolist()),
    )
    what = "pairs" if config.loss not in UNPAIRED_LOSSES else "judged responses"
    accelerator.print(f"{config.loss} on {config.model}: {len(train)} training {what}, {len(held_out)} held out")
    result = train_on_preferences(model, tokenizer.pad_token_id, train, held_out, config, accelerator)
    return finish_run(
        accelerator, Path(config.output_dir), result.summary, pretrained_saver(accelerator, model, tokenizer)
    )
