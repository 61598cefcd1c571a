"""Progress bars and the metrics file every trainer writes."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar (hidden on processes other than the main one)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


@functools.cache
def _summary_writer() -> type | None:
    """TensorBoard's SummaryWriter if tensorboard is installed (said once per process if it is not)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        Console(stderr=True).print("tensorboard is not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter


def trim_rows(path: Path, before: int) -> None:
    """Keep the rows of a step-numbered JSONL file (metrics.jsonl, samples.jsonl) whose step is below `before`.

    What a resumed run writes again goes, and so does a torn last line (a kill in mid-write) and anything
    after it.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row["step"] < before:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


class MetricsLog:
    """Appends one JSON object per logging step to `metrics.jsonl` (main process only), and writes the same
    scalars as TensorBoard events in `tensorboard/` beside it when tensorboard is installed.

    A run resumed from step N keeps the lines up to N and drops later ones (and a line torn by the kill),
    which the resumed run writes again: the file then reads as one uninterrupted run. A run that starts at
    step 0 starts an empty file.
    """

    def __init__(self, path: Path, enabled: bool, resume_after: int = 0) -> None:
        self.path = path
        self.enabled = enabled
        self.tensorboard = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        trim_rows(path, before=resume_after + 1 if resume_after else 0)
        writer = _summary_writer()
        if writer is not None:
            self.tensorboard = writer(str(path.parent / "tensorboard"), purge_step=resume_after + 1)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
