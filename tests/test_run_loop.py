"""The run lifecycle shared by every trainer (training/run_loop.py), on a one-weight model."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from rlhfkit.training.checkpoint import TrainingDiverged
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.progress import MetricsLog
from rlhfkit.training.run_loop import TrainingRun


def quadratic_run(tmp_path: Path, **settings) -> TrainingRun:
    config = TrainSettings(output_dir=str(tmp_path), max_steps=4, learning_rate=0.1, lr_schedule="constant", **settings)
    return TrainingRun(Accelerator(cpu=True), config, torch.nn.Linear(1, 1, bias=False), config.max_steps or 0)


def step_on(run: TrainingRun, target: float):
    """A train_step: one optimizer step on (w - target)², over two micro-batches of half the loss each."""

    def train_step(step: int) -> dict[str, float]:
        w = run.model.weight
        loss = float((w.detach() - target).square().sum())
        grad_norm = run.optimizer_step([lambda: (w - target).square().sum() / 2] * 2)
        return {"loss": loss, "grad_norm": grad_norm, "train/lr": run.lr}

    return train_step


def test_loop_trains_evaluates_logs_and_closes_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    closed = []
    monkeypatch.setattr(MetricsLog, "close", lambda self: closed.append(self.path))
    run = quadratic_run(tmp_path, eval_every=3, log_every=2)
    before = run.model.weight.item()
    result = run.loop("test", step_on(run, 5.0), ["loss"], lambda m: "", evaluate=lambda: {"eval/x": 1.0})
    assert result.steps == 4 and result.final_metrics["eval/x"] == 1.0
    assert run.model.weight.item() > before  # the steps moved the weight towards the target
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 3, 4]  # step 0's evaluation, log_every, each evaluation
    assert closed == [tmp_path / "metrics.jsonl"]  # the TensorBoard writer is released


def test_a_diverged_loss_stops_the_loop_and_still_closes_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    closed = []
    monkeypatch.setattr(MetricsLog, "close", lambda self: closed.append(self.path))
    run = quadratic_run(tmp_path)
    with pytest.raises(TrainingDiverged, match="step 1: loss = inf"):
        run.loop("test", step_on(run, float("inf")), ["loss"], lambda m: "")
    assert closed == [tmp_path / "metrics.jsonl"]
