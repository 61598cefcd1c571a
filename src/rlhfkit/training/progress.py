"""Progress bars and the metrics file every trainer writes."""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker
from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rlhfkit.training.trackers import experiment_trackers, hyperparameters

LINE_EVERY_S = 60.0  # without a terminal: a progress line at least this often while a task advances
LINE_PARTS = 10  # ... and at each tenth of the task


def line_due(last: float, completed: float, total: float | None, seconds_since: float, every_s: float) -> bool:
    """Whether a task that went from `last` to `completed` (of `total`) has passed a tenth of the task or
    its end, or has been silent `every_s` seconds since its last line."""
    if completed <= last:
        return False
    if total:
        part = total / LINE_PARTS
        if completed >= total or math.floor(completed / part) > math.floor(last / part):
            return True
    return seconds_since >= every_s


def progress_line(description: str, completed: float, total: float | None, elapsed: float, left: float | None) -> str:
    """What the bar shows, as one line of text: `train loss 4.392: 40/100 (40%), 0:01:02 elapsed, 0:01:33 left`."""

    def clock(seconds: float | None) -> str:
        return "?" if seconds is None else str(datetime.timedelta(seconds=int(seconds)))

    count = f"{completed:g}/{total:g} ({100 * completed / total:.0f}%)" if total else f"{completed:g}"
    return f"{description}: {count}, {clock(elapsed)} elapsed, {clock(left)} left"


class PlainWhenLogged(Progress):
    """A rich progress bar on a terminal. Elsewhere (output to a file or a pipe) rich would draw nothing until
    the end, so this prints a plain line per tenth of each task and at least every `every_s` seconds instead."""

    def __init__(self, *columns: Any, enabled: bool, console: Console | None, every_s: float, **kwargs: Any) -> None:
        console = console or get_console()
        self.plain = enabled and not (console.is_interactive or console.is_jupyter)
        super().__init__(*columns, console=console, disable=not enabled or self.plain, **kwargs)
        self.every_s = every_s
        self.last_line: dict[TaskID, tuple[float, float]] = {}  # task -> (completed, time) at its last line

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(*args, **kwargs)
        self.last_line[task_id] = (self._tasks[task_id].completed, self.get_time())
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        if not self.plain:
            return
        task, now = self._tasks[task_id], self.get_time()
        last, since = self.last_line[task_id]
        if line_due(last, task.completed, task.total, now - since, self.every_s):
            line = progress_line(task.description, task.completed, task.total, task.elapsed or 0.0, task.time_remaining)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self.last_line[task_id] = (task.completed, now)


def progress_bar(
    enabled: bool = True,
    console: Console | None = None,
    every_s: float = LINE_EVERY_S,
    get_time: Callable[[], float] | None = None,
) -> Progress:
    """A progress bar (hidden on processes other than the main one; plain lines when not on a terminal)."""
    return PlainWhenLogged(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        enabled=enabled,
        console=console,
        every_s=every_s,
        get_time=get_time,
    )


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
    """Appends one JSON object per logging step to `metrics.jsonl` (main process only), and logs the same
    scalars to the experiment trackers of `report_to` (`trackers.py`), which write beside it.

    A run resumed from step N keeps the lines up to N and drops later ones (and a line torn by the kill),
    which the resumed run writes again: the file then reads as one uninterrupted run. A run that starts at
    step 0 starts an empty file. `config` (flat: {dotted.name: value}) is stored as the trackers' hyperparameters.
    """

    def __init__(
        self,
        path: Path,
        enabled: bool,
        resume_after: int = 0,
        report_to: Sequence[str] = ("tensorboard",),
        config: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.enabled = enabled
        self.trackers: list[GeneralTracker] = []
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        trim_rows(path, before=resume_after + 1 if resume_after else 0)
        self.trackers = experiment_trackers(report_to, path.parent, resume_after)
        for tracker in self.trackers:
            if config is not None:
                tracker.store_init_configuration(hyperparameters(config))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        for tracker in self.trackers:
            tracker.log(metrics, step=step)  # TensorBoard's flushes: a killed run keeps what it logged

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
