"""`rlhfkit reward`: train a reward model (or an ensemble) on preference, ranking or rating records.

The pipeline: load each head's comparisons and hold some prompts out → for each ensemble member, train on
the data (a bootstrap resample for ensembles) → fit the normalisation on reference responses → save →
evaluate on the held-out comparisons and write `eval.json` next to the model.

One batch element is one comparison (a pair, or a whole K-way ranking with each reply forwarded once).
Under DDP (`accelerate launch`) every process takes batch_size / world comparisons of each global batch;
the loss is the mean over the global batch's comparisons (`training.reduction.GlobalMean`), as on one
process. Normalisation, evaluation and saving run on the main
process only.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Literal, cast

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import Field
from rich.console import Console
from torch import nn

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError
from rlhfkit.data.convert import split_by_prompt
from rlhfkit.data.readers import DataError, read_rows
from rlhfkit.data.records import Text, validate_record
from rlhfkit.models.loading import LoraSettings
from rlhfkit.reward.batching import BucketedRewards, RewardBatch, TokenizedComparison, batch_loss, collate
from rlhfkit.reward.data import Comparison, bootstrap, load_comparisons
from rlhfkit.reward.ensemble import RewardEnsemble, member_dir_name, write_index
from rlhfkit.reward.evaluate import evaluate
from rlhfkit.reward.model import CONFIG_FILE, RewardModel
from rlhfkit.training.batching import BatchOrder, chunks, shard
from rlhfkit.training.checkpoint import resume, save_checkpoint, stop_if_diverged
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.progress import MetricsLog, progress_bar
from rlhfkit.training.reduction import GlobalMean
from rlhfkit.training.run_loop import build_optimizer
from rlhfkit.training.runtime import start_run

console = Console()


class HeadData(Config):
    """The labels one reward head trains on."""

    data: str | None = Field(None, description="training records: JSONL/JSON/Parquet file or save_to_disk dir")
    kind: Literal["preference", "ranking", "rating"] = Field("preference", description="record kind of `data`")
    eval_data: str | None = Field(None, description="held-out records (default: a split of `data` by prompt)")
    weight: float = Field(1.0, description="default weight of this head in the combined reward")


class RewardConfig(TrainSettings):
    """A reward model r(x, y) trained on labelers' comparisons, one scalar head per objective."""

    model: str = Field("tiny-austen", description="backbone: default name, local path or hub id")
    backbone: Literal["causal_lm", "sequence_classification"] = Field(
        "causal_lm", description="causal LM + head at the last real token, or AutoModelForSequenceClassification"
    )
    heads: dict[str, HeadData] = Field(
        default_factory=lambda: {"reward": HeadData()}, description="head name -> its labels (heads.NAME.data=...)"
    )
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of prompts held out where eval_data is unset")
    max_length: int = Field(256, ge=2, description="tokens per prompt + reply; longer ones lose their start")
    margin: bool = Field(False, description="subtract pair margins (Llama 2): records' margin, rating gaps")
    ensemble: int = Field(1, ge=1, description="members, each trained on a bootstrap resample (1: one model)")
    normalize_data: str | None = Field(
        None, description="reference replies (prompt + responses/completion records); default: training replies"
    )
    normalize_samples: int = Field(1024, ge=0, description="reference replies for gain and bias (0: no normalising)")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters on the backbone")
    output_dir: str = Field("runs/reward", description="where the model, eval.json and metrics.jsonl go")
    learning_rate: float = Field(5e-5, gt=0, description="peak AdamW learning rate")
    epochs: float = Field(1.0, gt=0, description="passes over the comparisons (InstructGPT: 1; more overfits)")
    batch_size: int = Field(
        16, ge=1, description="comparisons (pairs or whole rankings) per optimizer step, all processes"
    )
    micro_batch_size: int = Field(16, ge=1, description="comparisons per forward pass on one process")
    eval_every: int = Field(50, ge=0, description="held-out evaluation every N steps (0: only at the end)")


def _optimizer_step(
    accelerator: Accelerator, model: nn.Module, batches: list[RewardBatch], share: int, max_grad_norm: float
) -> dict[str, float]:
    """Accumulate the gradient of the global batch's mean loss; metrics are averaged over the whole step."""
    mean = GlobalMean.over(accelerator, sum(b.mask.shape[0] for b in batches))  # sequence-level: comparisons
    sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1  # DDP all-reduces gradients once, after the last micro-batch
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss, metrics = batch_loss(model, batch, accelerator.device)
            accelerator.backward(mean(loss * batch.mask.shape[0]))  # the loss is the micro-batch's mean
        weight = batch.mask.shape[0] / share  # this micro-batch's share of the process's comparisons
        for name, value in metrics.items():
            sums[name] = sums.get(name, torch.zeros((), device=accelerator.device)) + value * weight
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    averaged = {name: accelerator.reduce(value.float(), reduction="mean").item() for name, value in sums.items()}
    return averaged | {"train/grad_norm": float(grad_norm)}


def train_member(
    model: RewardModel,
    train: list[Comparison],
    held_out: list[Comparison],
    settings: RewardConfig,
    accelerator: Accelerator,
) -> dict[str, float]:
    """Optimise the ranking loss on `train` (in settings.output_dir); returns the last step's metrics."""
    world = accelerator.num_processes
    output_dir = Path(settings.output_dir)
    data = [
        TokenizedComparison([model.encode(c.prompt, r) for r in c.responses], list(c.ranks), c.margin, c.head)
        for c in train
    ]
    order = BatchOrder(
        [max(map(len, c.ids)) for c in data], settings.batch_size, settings.seed, settings.group_by_length
    )
    steps = settings.max_steps or max(1, math.ceil(settings.epochs * order.steps_per_epoch))
    optimizer, scheduler = build_optimizer(model, settings, steps)
    wrapped, optimizer, scheduler = accelerator.prepare(BucketedRewards(model), optimizer, scheduler)
    start = resume(accelerator, output_dir) if settings.resume else 0
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process, resume_after=start)
    pad_id, share = model.tokenizer.pad_token_id, settings.batch_size // world
    metrics: dict[str, float] = {}
    started, pairs_seen = time.perf_counter(), 0
    with progress_bar(accelerator.is_main_process) as bar:
        task = bar.add_task("reward", total=steps, completed=start)
        for step in range(start + 1, steps + 1):
            mine = shard(order.global_batch(step - 1), accelerator.process_index, world)
            batches = [collate([data[i] for i in part], pad_id) for part in chunks(mine, settings.micro_batch_size)]
            metrics = _optimizer_step(accelerator, wrapped, batches, share, settings.max_grad_norm)
            stop_if_diverged(accelerator, {"rm/loss": metrics["rm/loss"]}, step, output_dir)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            pairs_seen += sum(b.pairs for b in batches) * world
            metrics |= {
                "train/lr": scheduler.get_last_lr()[0],
                "perf/pairs_per_s": pairs_seen / (time.perf_counter() - started),
            }
            bar.update(task, advance=1, description=f"reward loss {metrics['rm/loss']:.3f}")
            evaluate_now = (settings.eval_every and step % settings.eval_every == 0) or step == steps
            if evaluate_now and held_out and accelerator.is_main_process:
                metrics |= evaluate(model, held_out)
            if step % settings.log_every == 0 or evaluate_now:
                log.write(step, metrics)
            if settings.save_every and step % settings.save_every == 0 and step < steps:
                save_checkpoint(accelerator, output_dir, step, settings.keep_checkpoints)
    log.close()
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # forget the prepared objects: the next ensemble member starts clean
    return metrics


def load_heads(config: RewardConfig) -> tuple[list[Comparison], list[Comparison]]:
    """(train, held-out) comparisons of every head, each tagged with its head's index.

    A head whose training data has no pair saying which reply is better (all ties, or chosen == rejected)
    is a DataError; held-out data without one only gets a warning, as no accuracy can be measured on it.
    """
    train, held_out = [], []
    for head, (name, spec) in enumerate(config.heads.items()):
        if spec.data is None:
            raise ConfigError(f"heads.{name}.data is not set: give a file of {spec.kind} records")
        data = load_comparisons(spec.data, spec.kind, head, config.margin)
        if spec.eval_data is not None:
            held = load_comparisons(spec.eval_data, spec.kind, head, config.margin)
        else:
            data, held = split_by_prompt(data, config.eval_fraction, config.seed)
        if not sum(c.informative_pairs() for c in data):
            raise DataError(
                f"heads.{name}: {spec.data}: no usable training pairs: all {len(data)} comparisons are ties "
                "or compare a reply with itself"
            )
        if held and not sum(c.informative_pairs() for c in held):
            console.print(
                f"[yellow]heads.{name}: the {len(held)} held-out comparisons are all ties or compare a reply with "
                "itself: no held-out accuracy can be measured"
            )
        train += data
        held_out += held
    return train, held_out


def reference_replies(config: RewardConfig, train: list[Comparison]) -> tuple[list[Text], list[Text]]:
    """Up to normalize_samples (prompt, reply) pairs to normalise on, a seeded sample without repeats.

    From `normalize_data` (prompt + responses rows, as `rlhfkit generate` writes, or prompt + completion
    rows), else from the training comparisons' replies.
    """
    if config.normalize_data is not None:
        pairs = []
        for row in read_rows(assets.resolve(config.normalize_data)):
            if "responses" in row.data:
                record = validate_record(row.data, "candidates", row.location)
                pairs += [(record.prompt, reply) for reply in record.responses]
            else:
                demo = validate_record(row.data, "sft", row.location)
                if demo.prompt is None:
                    raise DataError(f"{row.location}: reference rows need `prompt` and `responses` or `completion`")
                pairs.append((demo.prompt, cast(Text, demo.completion)))  # set wherever the prompt is
    else:
        pairs = [(c.prompt, r) for c in train for r in c.responses]
    unique = list({json.dumps([_plain(p), _plain(r)]): (p, r) for p, r in pairs}.values())
    random.Random(config.seed).shuffle(unique)
    chosen = unique[: config.normalize_samples]
    return [p for p, _ in chosen], [r for _, r in chosen]


def _plain(text: Text) -> str | list:
    return text if isinstance(text, str) else [m.model_dump() for m in text]


def reward(config: RewardConfig) -> Path:
    """Train, normalise, save and evaluate; returns the model directory (see the module docstring)."""
    accelerator = start_run(config, config)
    output_dir = Path(config.output_dir)
    train, held_out = load_heads(config)
    names = list(config.heads)
    accelerator.print(
        f"reward model on {config.model} ({config.backbone}), heads {', '.join(names)}: "
        f"{len(train)} comparisons for training, {len(held_out)} held out"
    )
    reference = reference_replies(config, train) if config.normalize_samples else None
    members = []
    for m in range(config.ensemble):
        member_dir = output_dir if config.ensemble == 1 else output_dir / member_dir_name(m)
        if config.resume and (member_dir / CONFIG_FILE).exists():  # a member finished before the interruption
            members.append(RewardModel.load(member_dir))
            continue
        seed = config.seed + m
        set_seed(seed)
        model = RewardModel.from_pretrained(
            config.model,
            names,
            config.backbone,
            config.max_length,
            {n: h.weight for n, h in config.heads.items()},
            config.lora,
        )
        member = config.model_copy(update={"output_dir": str(member_dir), "seed": seed})
        data = train if config.ensemble == 1 else bootstrap(train, seed)
        final = train_member(model, data, held_out, member, accelerator)
        if accelerator.is_main_process:
            if reference is not None:
                model.fit_normalization(*reference)
            model.save(member_dir)
            (member_dir / "train_summary.json").write_text(json.dumps(final, indent=2) + "\n")
        members.append(model)
    if accelerator.is_main_process:
        trained = members[0] if config.ensemble == 1 else RewardEnsemble(members)
        if config.ensemble > 1:
            write_index(output_dir, config.ensemble)  # the members are saved already
        if held_out:
            metrics = evaluate(trained, held_out)
            (output_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
            for name in names:
                if f"eval/{name}/accuracy" in metrics:
                    console.print(
                        f"held-out {name}: accuracy {metrics[f'eval/{name}/accuracy']:.3f}, "
                        f"margin {metrics[f'eval/{name}/margin']:.3f}, ECE {metrics[f'eval/{name}/ece']:.3f} "
                        f"({int(metrics[f'eval/{name}/pairs'])} pairs)"
                    )
        console.print(f"reward model saved to {output_dir}")
    accelerator.wait_for_everyone()
    return output_dir
