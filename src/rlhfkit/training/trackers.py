"""Experiment trackers beside metrics.jsonl (`report_to`): TensorBoard, Weights & Biases, MLflow, as accelerate's
tracker classes, so each logs what accelerate's `Accelerator(log_with=...)` would.

All three work with no server: TensorBoard writes event files to `tensorboard/`; W&B runs offline with
WANDB_MODE=offline (its files in `wandb/`, for `wandb sync` later); MLflow writes a local file store in
`mlruns/` unless MLFLOW_TRACKING_URI names another store. W&B's project and MLflow's experiment are
"rlhfkit" unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say otherwise; each run is named after its
output directory.

The metrics log drives the trackers itself (start, log, finish) instead of through an Accelerator: an
Accelerator fixes its trackers when it is created, before the resume step and the directory of an ensemble
member are known, and its `end_training` also destroys the process group a run still needs to save its model.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from accelerate.state import PartialState
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker, on_main_process
from rich.console import Console

from rlhfkit.config import ConfigError

Tracker = Literal["tensorboard", "wandb", "mlflow"]
TRACKERS: tuple[str, ...] = get_args(Tracker)
PROJECT = "rlhfkit"
_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
_EXTRA = "pip install 'rlhfkit[trackers]'"


def installed(name: str) -> bool:
    return any(importlib.util.find_spec(module) is not None for module in _MODULES[name])


def check_trackers(report_to: Sequence[str]) -> None:
    """A ConfigError naming W&B or MLflow when asked for but not installed, raised before a run writes anything.
    TensorBoard, on by default, is skipped with a note instead (`_tensorboard_missing`)."""
    missing = [name for name in report_to if name != "tensorboard" and not installed(name)]
    if missing:
        raise ConfigError(f"report_to: {', '.join(missing)} not installed; {_EXTRA}, or leave it out of report_to")


@functools.cache
def _tensorboard_missing() -> None:
    """Said once per process."""
    Console(stderr=True).print("tensorboard is not installed: metrics go to metrics.jsonl only")


class LocalMLflowTracker(MLflowTracker):
    """accelerate's MLflow tracker on a given store: MLFLOW_TRACKING_URI if set, else a file store in `mlruns/`."""

    def __init__(self, output_dir: Path, run_name: str) -> None:
        super().__init__(PROJECT, run_name=run_name)
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or (output_dir / "mlruns").resolve().as_uri()

    @on_main_process
    def start(self) -> None:
        import mlflow

        if self.tracking_uri.startswith("file:"):
            # MLflow keeps its file store in "maintenance mode" and refuses it unless asked: a local store
            # needs no database (a SQLite store takes a minute of migrations to create).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.tracking_uri)
        super().start()


def experiment_trackers(report_to: Sequence[str], output_dir: Path, resume_after: int) -> list[GeneralTracker]:
    """The started trackers of `report_to` for the run in `output_dir`; a run resumed after step N drops the
    TensorBoard events after N (written again), as metrics.jsonl does."""
    PartialState()  # accelerate's trackers log through its logger, which needs its process state (control has none)
    trackers: list[GeneralTracker] = []
    for name in report_to:
        if name == "tensorboard" and not installed(name):
            _tensorboard_missing()
        elif name == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", output_dir, purge_step=resume_after + 1))
        elif name == "wandb":
            trackers.append(
                WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), dir=output_dir, name=output_dir.name)
            )
        else:
            trackers.append(LocalMLflowTracker(output_dir, output_dir.name))
    for tracker in trackers:
        tracker.start()
    return trackers


def hyperparameters(flat: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """A flat config ({dotted.name: value}) as every tracker stores it: lists and None as text."""
    return {key: value if isinstance(value, bool | int | float | str) else str(value) for key, value in flat.items()}
