"""Agreement, gold accuracy and progress of a labelling project, from its raw judgments.

A task's judgments are split into units (the choice for a pair, each pair of replies for a ranking, the
score for a rating), so every task is measured the same way:
- pairwise agreement: of all pairs of annotators who judged the same unit, the fraction that agree;
- Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"): 1 - D_o / D_e,
  observed over chance-expected disagreement, at the task's level of measurement (nominal, ordinal,
  interval); 1 is perfect agreement, 0 is chance;
- gold accuracy: the fraction of an annotator's judgments of gold items whose units all equal the gold's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from statistics import median
from typing import Any, Literal, cast

import krippendorff
import numpy as np

from rlhfkit.feedback.store import JudgmentRow
from rlhfkit.feedback.tasks import Task


@dataclass
class AnnotatorStats:
    name: str
    judgments: int = 0
    median_seconds: float | None = None
    agreement: float | None = None  # with the other annotators of the same units
    gold_judged: int = 0
    gold_correct: int = 0

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_judged if self.gold_judged else None


@dataclass
class ProjectStats:
    items: int
    complete_items: int  # judged by at least `per_item` annotators
    judgments: int
    agreement: float | None
    alpha: float | None
    annotators: list[AnnotatorStats] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, annotator in zip(data["annotators"], self.annotators, strict=True):
            row["gold_accuracy"] = annotator.gold_accuracy
        return data


def unit_values(task: Task, rows: Sequence[JudgmentRow]) -> dict[tuple[int, Any], dict[str, Any]]:
    """(item id, unit) -> {annotator: value} over every judgment."""
    values: dict[tuple[int, Any], dict[str, Any]] = defaultdict(dict)
    units = task.agreement_units
    assert units is not None, "called for tasks with agreement units only"
    for row in rows:
        for unit, value in units(row.payload).items():
            values[row.item.id, unit][row.annotator] = value
    return values


def pairwise_agreement(values: dict[Any, dict[str, Any]]) -> tuple[float | None, dict[str, float]]:
    """The overall fraction of agreeing annotator pairs on shared units, and each annotator's own."""
    agree: dict[str, list[bool]] = defaultdict(list)
    overall: list[bool] = []
    for by_annotator in values.values():
        for (a, va), (b, vb) in combinations(by_annotator.items(), 2):
            overall.append(va == vb)
            agree[a].append(va == vb)
            agree[b].append(va == vb)
    mean = sum(overall) / len(overall) if overall else None
    return mean, {name: sum(flags) / len(flags) for name, flags in agree.items()}


Level = Literal["nominal", "ordinal", "interval", "ratio"]  # the levels `krippendorff.alpha` knows


def krippendorff_alpha(values: dict[Any, dict[str, Any]], level: str) -> float | None:
    """Alpha over units judged by at least two annotators; None when there are none or no variation."""
    units = [by_annotator for by_annotator in values.values() if len(by_annotator) >= 2]
    annotators = sorted({name for unit in units for name in unit})
    codes = {v: i for i, v in enumerate(sorted({repr(v) for unit in units for v in unit.values()}))}
    if not units or len(codes) < 2:
        return None
    matrix = np.full((len(annotators), len(units)), np.nan)
    for column, unit in enumerate(units):
        for name, value in unit.items():
            numeric = level != "nominal" and isinstance(value, int | float)
            matrix[annotators.index(name), column] = value if numeric else codes[repr(value)]
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=cast(Level, level)))


def project_stats(task: Task, per_item: int, items: int, rows: Sequence[JudgmentRow]) -> ProjectStats:
    per_item_counts: dict[int, int] = defaultdict(int)
    by_annotator: dict[str, AnnotatorStats] = {}
    seconds: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        per_item_counts[row.item.id] += 1
        stats = by_annotator.setdefault(row.annotator, AnnotatorStats(row.annotator))
        stats.judgments += 1
        seconds[row.annotator].append(row.judgment.duration_ms / 1000)
        if row.item.gold is not None and task.agreement_units is not None:
            stats.gold_judged += 1
            stats.gold_correct += task.agreement_units(row.payload) == task.agreement_units(row.item.gold)
    agreement = alpha = None
    if task.agreement_units is not None:
        values = unit_values(task, rows)
        agreement, own = pairwise_agreement(values)
        alpha = krippendorff_alpha(values, task.agreement_level)
        for name, value in own.items():
            by_annotator[name].agreement = value
    for name, stats in by_annotator.items():
        stats.median_seconds = median(seconds[name])
    return ProjectStats(
        items=items,
        complete_items=sum(count >= per_item for count in per_item_counts.values()),
        judgments=len(rows),
        agreement=agreement,
        alpha=alpha,
        annotators=sorted(by_annotator.values(), key=lambda s: s.name),
    )
