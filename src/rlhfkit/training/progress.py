"""Progress bars and the metrics file every trainer writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

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


class MetricsLog:
    """Appends one JSON object per logging step to `metrics.jsonl` (main process only).

    A run resumed from step N keeps the lines up to N and drops later ones, which the resumed run
    writes again: the file then reads as one uninterrupted run.
    """

    def __init__(self, path: Path, enabled: bool, resume_after: int = 0) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if resume_after and path.exists():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_after]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
