"""The run lifecycle every trainer shares, so that a trainer is written as its maths and its batch.

`runtime.start_run` (accelerate, output_dir, config) → `TrainingRun`: optimizer and schedule, accelerate's
prepare, resume from the last checkpoint, the metrics log → `TrainingRun.loop`: for each step the
trainer's `train_step` (which calls `optimizer_step`: accumulate the micro-batches' gradients, clip, step,
schedule), `stop_if_diverged`, progress, held-out evaluation, the metrics log, checkpoints → the metrics
log and its TensorBoard writer closed → `runtime.finish_run` saves the model and the summary.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from transformers import get_scheduler

from rlhfkit.config import ConfigError
from rlhfkit.training.batching import BatchOrder
from rlhfkit.training.checkpoint import resume, save_checkpoint, stop_if_diverged
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.progress import MetricsLog, progress_bar
from rlhfkit.training.runtime import flatten


@dataclass
class TrainResult:
    steps: int
    final_metrics: dict[str, float]

    @property
    def summary(self) -> dict[str, float]:
        """What train_summary.json holds: the steps and the last step's metrics."""
        return {"steps": self.steps, **self.final_metrics}


def total_steps(settings: TrainSettings, order: BatchOrder) -> int:
    return settings.max_steps or max(1, math.ceil(settings.epochs * order.steps_per_epoch))


def build_optimizer(
    model: nn.Module, settings: TrainSettings, steps: int, learning_rates: dict[nn.Module, float] | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters (LoRA: the adapters only) and the warm-up + decay schedule.

    `learning_rates` gives some submodules their own peak rate (e.g. PPO's critic); the rest use the settings'.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = []
    for module, rate in (learning_rates or {}).items():
        own = {id(p) for p in module.parameters()}
        groups.append({"params": [p for p in trainable if id(p) in own], "lr": rate})
        trainable = [p for p in trainable if id(p) not in own]
    groups.insert(0, {"params": trainable})
    # fused: one kernel for all tensors instead of several small ops per tensor (about 4x faster on CPU)
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=settings.learning_rate,
        betas=settings.adam_betas,
        weight_decay=settings.weight_decay,
        fused=True,
    )
    return optimizer, get_scheduler(settings.lr_schedule, optimizer, settings.warmup_steps, steps)


def prepare_for_fsdp(model: nn.Module) -> None:
    """Name the transformer layers of every transformers model inside `model` as its `_no_split_modules`, so
    that FSDP's transformer wrap policy shards each layer alone (it reads them from the prepared module, here
    a trainer's wrapper); refuse LoRA, whose adapters cannot be merged into sharded weights at the save."""
    from peft import PeftModel

    if any(isinstance(module, PeftModel) for module in model.modules()):
        raise ConfigError("LoRA under FSDP is not supported: train LoRA with DDP (configs/accelerate/ddp.yaml)")
    layers = {name for module in model.modules() for name in getattr(module, "_no_split_modules", None) or ()}
    model._no_split_modules = sorted(layers)  # type: ignore[assignment]  # a plain attribute, as transformers sets it


def accumulate(accelerator: Accelerator, model: nn.Module, micro_losses: Sequence[Callable[[], torch.Tensor]]) -> None:
    """Backward of each micro-batch's loss (already its share of the global mean, see `reduction.py`).

    DDP all-reduces the gradients once, after the last micro-batch; the others run under no_sync.
    """
    for i, micro_loss in enumerate(micro_losses):
        last = i == len(micro_losses) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model), accelerator.autocast():
            accelerator.backward(micro_loss())


def optimizer_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    micro_losses: Sequence[Callable[[], torch.Tensor]],
) -> float:
    """Accumulate the micro-batches' gradients, clip, step and schedule; the gradient norm before clipping."""
    accumulate(accelerator, model, micro_losses)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


class TrainingRun:
    """One run's optimizer, schedule, prepared model, resume point and metrics log."""

    def __init__(
        self,
        accelerator: Accelerator,
        settings: TrainSettings,
        model: nn.Module,
        steps: int,
        *,
        optimizer_steps: int | None = None,
        learning_rates: dict[nn.Module, float] | None = None,
        checkpointed: Sequence[object] = (),
    ) -> None:
        """`optimizer_steps` (default: `steps`) sets the schedule's length; `checkpointed` objects (with
        state_dict/load_state_dict) are saved in the checkpoints and restored on resume."""
        self.accelerator = accelerator
        self.settings = settings
        self.steps = steps
        self.output_dir = Path(settings.output_dir)
        if accelerator.distributed_type == DistributedType.FSDP:
            prepare_for_fsdp(model)
        optimizer, scheduler = build_optimizer(model, settings, optimizer_steps or steps, learning_rates)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        if checkpointed:
            accelerator.register_for_checkpointing(*checkpointed)
        self.start = resume(accelerator, self.output_dir) if settings.resume else 0
        self.log = MetricsLog(
            self.output_dir / "metrics.jsonl",
            accelerator.is_main_process,
            resume_after=self.start,
            report_to=settings.report_to,
            config=flatten(settings.model_dump(mode="json")),
        )
        self._started = time.perf_counter()
        self._items = 0.0

    @property
    def lr(self) -> float:
        """The learning rate of the last optimizer step (the first parameter group's)."""
        return float(self.scheduler.get_last_lr()[0])

    def optimizer_step(self, micro_losses: Sequence[Callable[[], torch.Tensor]]) -> float:
        """`optimizer_step` on this run's model, optimizer and schedule."""
        return optimizer_step(
            self.accelerator, self.model, self.optimizer, self.scheduler, self.settings.max_grad_norm, micro_losses
        )

    def rate(self, items: float) -> float:
        """Items per second since the first step of this run, counting `items` more."""
        self._items += items
        return self._items / (time.perf_counter() - self._started)

    def loop(
        self,
        name: str,
        train_step: Callable[[int], dict[str, float]],
        losses: Sequence[str],
        describe: Callable[[dict[str, float]], str],
        evaluate: Callable[[], dict[str, float]] | None = None,
        report: Callable[[dict[str, float]], str] | None = None,
        evaluate_first: bool = True,
        on_log: Callable[[int], None] | None = None,
    ) -> TrainResult:
        """Steps start + 1 .. steps; returns the last step's metrics.

        `train_step(step)` trains one step and returns its metrics, of which `losses` are checked for
        divergence and `describe` gives the progress line. `evaluate` (held-out metrics) runs every
        eval_every steps, at the last step and, with `evaluate_first`, at step 0 of a fresh run; `report`
        prints a line of its metrics. Logged: every log_every steps and at each evaluation step, then `on_log`.
        """
        settings, accelerator = self.settings, self.accelerator
        metrics: dict[str, float] = {}
        try:
            if self.start == 0 and evaluate is not None and evaluate_first:  # shows what training changed
                self.log.write(0, evaluate())
            self._started = time.perf_counter()
            with progress_bar(accelerator.is_main_process) as bar:
                task = bar.add_task(name, total=self.steps, completed=self.start)
                for step in range(self.start + 1, self.steps + 1):
                    metrics = train_step(step)
                    stop_if_diverged(accelerator, {key: metrics[key] for key in losses}, step, self.output_dir)
                    bar.update(task, advance=1, description=describe(metrics))
                    evaluate_now = (settings.eval_every and step % settings.eval_every == 0) or step == self.steps
                    if evaluate_now and evaluate is not None:
                        metrics |= evaluate()
                        if report is not None:
                            bar.console.print(f"step {step}: {report(metrics)}")
                    if step % settings.log_every == 0 or evaluate_now:
                        self.log.write(step, metrics)
                        if on_log is not None:
                            on_log(step)
                    if settings.save_every and step % settings.save_every == 0 and step < self.steps:
                        save_checkpoint(accelerator, self.output_dir, step, settings.keep_checkpoints)
        finally:
            self.log.close()
        return TrainResult(steps=self.steps, final_metrics=metrics)
