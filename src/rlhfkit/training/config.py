"""Optimisation settings shared by every trainer (pretrain, SFT, and later reward, DPO)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlhfkit.config import Config
from rlhfkit.training.trackers import Tracker


class TrainSettings(Config):
    """How to optimise: batch sizes, schedule, checkpoints, logging."""

    output_dir: str = Field("runs/train", description="where checkpoints, metrics.jsonl and the final model go")
    seed: int = Field(0, description="seed for initialisation, data order and dropout")
    learning_rate: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    epochs: float = Field(1.0, gt=0, description="passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step, over all processes")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward pass on one process")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping by global norm")
    group_by_length: bool = Field(True, description="batch sequences of similar length (less padding)")
    eval_every: int = Field(100, ge=0, description="held-out evaluation every N steps (0: only at the end)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps for --resume (0: never)")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    log_every: int = Field(10, ge=1, description="write metrics every N steps")
    report_to: list[Tracker] = Field(
        ["tensorboard"], description="experiment trackers besides metrics.jsonl: tensorboard, wandb, mlflow"
    )
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch (None: torch's default)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="autocast precision of forward and backward: no (fp32), bf16 (CPU or GPU; weights and "
        "optimizer stay fp32, log-probabilities and reward/value heads are computed in fp32) or fp16 (GPUs without "
        "bf16, with loss scaling)",
    )
    resume: bool = Field(False, description="continue from the last checkpoint in output_dir")
    overwrite: bool = Field(False, description="start afresh in an output_dir that holds a run, deleting its contents")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: object) -> object:
        return "no" if value is False else value  # YAML reads an unquoted `no` as false

    @model_validator(mode="after")
    def _resume_or_overwrite(self) -> TrainSettings:
        if self.resume and self.overwrite:
            raise ValueError("resume continues the run in output_dir and overwrite deletes it: set one of them")
        return self
