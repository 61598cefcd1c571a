"""`rlhfkit reward`: train a reward model (or an ensemble) on preference, ranking or rating records.

The pipeline: load each head's comparisons and hold some prompts out → for each ensemble member, train on
the data (a bootstrap resample for ensembles) → fit the normalisation on reference responses → save →
evaluate on the held-out comparisons and write `eval.json` next to the model. With preference-model
pretraining (`pmp.data`, Askell et al. 2021, section 4), every member starts from a model first trained
the same way on the PMP comparisons (into output_dir/pmp, see `pmp.py`), then fine-tuned on the labels.

One batch element is one comparison (a pair, or a whole K-way ranking with each reply forwarded once).
Under DDP (`accelerate launch`) every process takes batch_size / world comparisons of each global batch;
the loss is the mean over the global batch's comparisons (`training.reduction.GlobalMean`), as on one
process. Normalisation, evaluation and saving run on the main
process only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal, cast

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from pydantic import Field

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError
from rlhfkit.data.convert import split_by_prompt
from rlhfkit.data.readers import DataError, read_rows
from rlhfkit.data.records import Text, validate_record
from rlhfkit.models.loading import LoraSettings
from rlhfkit.models.reward import CONFIG_FILE, RewardModel
from rlhfkit.models.reward_ensemble import RewardEnsemble, member_dir_name, write_index
from rlhfkit.reward.batching import BucketedRewards, RewardBatch, TokenizedComparison, batch_loss, collate
from rlhfkit.reward.data import Comparison, Kind, bootstrap, load_comparisons
from rlhfkit.reward.evaluate import evaluate
from rlhfkit.training.batching import BatchOrder, chunks, shard
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.metrics import StepMetrics
from rlhfkit.training.reduction import GlobalMean
from rlhfkit.training.run_loop import TrainingRun, TrainResult, total_steps
from rlhfkit.training.runtime import finish_run, start_run


class HeadData(Config):
    """The labels one reward head trains on."""

    data: str | None = Field(None, description="training records: JSONL/JSON/Parquet file or save_to_disk dir")
    kind: Kind | None = Field(None, description="record kind of `data` (default: from its fields)")
    eval_data: str | None = Field(None, description="held-out records (default: a split of `data` by prompt)")
    weight: float = Field(1.0, description="default weight of this head in the combined reward")


class PMPPhase(Config):
    """Preference-model pretraining: cheap automatic comparisons trained on before the human labels."""

    data: str | None = Field(None, description="comparisons to pretrain on first (`rlhfkit pmp build`); None: no PMP")
    kind: Literal["preference", "ranking", "rating"] = Field("preference", description="record kind of `data`")
    model: str | None = Field(None, description="start from this PMP reward model (a run's pmp/) instead of `data`")
    epochs: float = Field(1.0, gt=0, description="passes over the PMP comparisons")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate of the PMP phase")


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
    pmp: PMPPhase = Field(default_factory=PMPPhase, description="preference-model pretraining before the labels")
    output_dir: str = Field("runs/reward", description="where the model, eval.json and metrics.jsonl go")
    learning_rate: float = Field(5e-5, gt=0, description="peak AdamW learning rate")
    epochs: float = Field(1.0, gt=0, description="passes over the comparisons (InstructGPT: 1; more overfits)")
    batch_size: int = Field(
        16, ge=1, description="comparisons (pairs or whole rankings) per optimizer step, all processes"
    )
    micro_batch_size: int = Field(16, ge=1, description="comparisons per forward pass on one process")
    eval_every: int = Field(50, ge=0, description="held-out evaluation every N steps (0: only at the end)")


def train_member(
    model: RewardModel,
    train: list[Comparison],
    held_out: list[Comparison],
    settings: RewardConfig,
    accelerator: Accelerator,
) -> TrainResult:
    """Optimise the ranking loss on `train` (in settings.output_dir); returns the steps and last metrics."""
    world, micro = accelerator.num_processes, settings.micro_batch_size
    data = [
        TokenizedComparison([model.encode(c.prompt, r) for r in c.responses], list(c.ranks), c.margin, c.head)
        for c in train
    ]
    order = BatchOrder(
        [max(map(len, c.ids)) for c in data], settings.batch_size, settings.seed, settings.group_by_length
    )
    run = TrainingRun(accelerator, settings, BucketedRewards(model), total_steps(settings, order))
    pad_id = model.tokenizer.pad_token_id

    def train_step(step: int) -> dict[str, float]:
        """One optimizer step on the global batch's mean loss over comparisons; metrics averaged likewise."""
        mine = shard(order.global_batch(step - 1), accelerator.process_index, world)
        batches = [collate([data[i] for i in part], pad_id) for part in chunks(mine, micro)]
        mean = GlobalMean.over(accelerator, sum(len(b.mask) for b in batches))  # sequence-level: comparisons
        metrics = StepMetrics()

        def micro_loss(batch: RewardBatch) -> torch.Tensor:
            loss, batch_metrics = batch_loss(run.model, batch, accelerator.device)
            for name, value in batch_metrics.items():  # means over the micro-batch's comparisons
                metrics.add_total(name, value.detach() * len(batch.mask), len(batch.mask))
            return mean(loss * len(batch.mask))

        grad_norm = run.optimizer_step([partial(micro_loss, b) for b in batches])
        return metrics.mean(accelerator) | {
            "train/grad_norm": grad_norm,
            "train/lr": run.lr,
            "perf/pairs_per_s": run.rate(sum(b.pairs for b in batches) * world),
        }

    def held_out_metrics() -> dict[str, float]:  # on the main process only
        return evaluate(model, held_out) if accelerator.is_main_process else {}

    result = run.loop(
        "reward",
        train_step,
        losses=["rm/loss"],
        describe=lambda m: f"reward loss {m['rm/loss']:.3f}",
        evaluate=held_out_metrics if held_out else None,
        evaluate_first=False,
    )
    accelerator.free_memory()  # forget the prepared objects: the next ensemble member starts clean
    return result


def normalized_saver(model: RewardModel, reference: tuple[list[Text], list[Text]] | None) -> Callable[[Path], None]:
    """Fits the normalisation on the reference replies (if any), then saves the reward model."""

    def save(directory: Path) -> None:
        if reference is not None:
            model.fit_normalization(*reference)
        model.save(directory)

    return save


def load_heads(config: RewardConfig) -> tuple[list[Comparison], list[Comparison], list[str]]:
    """(train, held-out, notes): the comparisons of every head, each tagged with its head's index.

    A head whose training data has no pair saying which reply is better (all ties, or chosen == rejected)
    is a DataError; held-out data without one only gets a note, as no accuracy can be measured on it.
    """
    train, held_out, notes = [], [], []
    for head, (name, spec) in enumerate(config.heads.items()):
        if spec.data is None:
            raise ConfigError(f"heads.{name}.data is not set: give a file of {spec.kind or 'preference'} records")
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
            notes.append(
                f"heads.{name}: the {len(held)} held-out comparisons are all ties or compare a reply with "
                "itself: no held-out accuracy can be measured"
            )
        train += data
        held_out += held
    return train, held_out, notes


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


PMP_DIR = "pmp"  # the PMP phase's model, metrics and eval.json, inside output_dir


def check_pmp(config: RewardConfig) -> None:
    """Refuse a PMP phase that cannot run, before anything is written: two sources, several heads, too few
    comparisons (less than a batch that says which reply is better) or no saved model."""
    pmp = config.pmp
    if pmp.data is not None and pmp.model is not None:
        raise ConfigError("pmp.data trains a PMP model and pmp.model names a trained one: set one of them")
    if (pmp.data or pmp.model) and len(config.heads) > 1:
        raise ConfigError(f"pmp: pretrains one reward head, and heads has {len(config.heads)}")
    if pmp.model is not None and not (Path(pmp.model) / CONFIG_FILE).exists():
        raise ConfigError(f"pmp.model: {pmp.model} is not a reward model directory (no {CONFIG_FILE})")
    if pmp.data is not None:
        usable = sum(c.informative_pairs() > 0 for c in load_comparisons(pmp.data, pmp.kind))
        if usable < config.batch_size:
            raise DataError(
                f"pmp.data: {assets.resolve(pmp.data)}: {usable} comparisons say which reply is better (fields "
                f"'chosen'/'rejected', 'ranks' or 'score' differ), fewer than one batch ({config.batch_size}): "
                "build more with `rlhfkit pmp build`"
            )


def pmp_phase(config: RewardConfig) -> RewardConfig:
    """The PMP phase: the same backbone and head trained on the PMP comparisons, into output_dir/pmp."""
    name, head = next(iter(config.heads.items()))
    return config.model_copy(
        update={
            "heads": {name: HeadData(data=config.pmp.data, kind=config.pmp.kind, weight=head.weight)},
            "epochs": config.pmp.epochs,
            "learning_rate": config.pmp.learning_rate,
            "max_steps": None,
            "ensemble": 1,
            "normalize_samples": 0,
            "pmp": PMPPhase(),
            "output_dir": str(Path(config.output_dir) / PMP_DIR),
        }
    )


def pretrained_start(config: RewardConfig) -> Path | None:
    """The PMP reward model the members start from: pmp.model, or trained now on pmp.data; None: no PMP."""
    if config.pmp.model is not None:
        return Path(config.pmp.model)
    if config.pmp.data is None:
        return None
    phase = pmp_phase(config)
    if config.resume and (Path(phase.output_dir) / CONFIG_FILE).exists():  # finished before the interruption
        return Path(phase.output_dir)
    return reward(phase)


def initial_model(config: RewardConfig, names: list[str], start: Path | None) -> RewardModel:
    """A new reward model on `config.model`, or (PMP) the pretrained one, fine-tuned whole."""
    if start is None:
        weights = {n: h.weight for n, h in config.heads.items()}
        return RewardModel.from_pretrained(
            config.model, names, config.backbone, config.max_length, weights, config.lora
        )
    model = RewardModel.load(start).train()
    if model.head_names != names:
        raise ConfigError(f"pmp: {start} has heads {model.head_names}, and this run trains {names}")
    model.max_length = config.max_length
    return model


def reward(config: RewardConfig) -> Path:
    """Train, normalise, save and evaluate; returns the model directory (see the module docstring)."""
    check_pmp(config)
    accelerator = start_run(config, config)
    if accelerator.distributed_type == DistributedType.FSDP:  # normalisation and save read whole weights on rank 0
        raise ConfigError("reward models train with DDP, not FSDP: launch with torchrun or configs/accelerate/ddp.yaml")
    output_dir = Path(config.output_dir)
    train, held_out, notes = load_heads(config)
    start = pretrained_start(config)
    for note in notes:
        accelerator.print(f"[data] {note}")
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
        model = initial_model(config, names, start)
        member = config.model_copy(update={"output_dir": str(member_dir), "seed": seed})
        data = train if config.ensemble == 1 else bootstrap(train, seed)
        result = train_member(model, data, held_out, member, accelerator)
        finish_run(accelerator, member_dir, result.summary, normalized_saver(model, reference))
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
                    accelerator.print(
                        f"held-out {name}: accuracy {metrics[f'eval/{name}/accuracy']:.3f}, "
                        f"margin {metrics[f'eval/{name}/margin']:.3f}, ECE {metrics[f'eval/{name}/ece']:.3f} "
                        f"({int(metrics[f'eval/{name}/pairs'])} pairs)"
                    )
        accelerator.print(f"reward model saved to {output_dir}")
    accelerator.wait_for_everyone()
    return output_dir
