"""Judgments to training data: one record per raw judgment (with its annotator), or one per item by consensus.

The records are the shapes `rlhfkit reward`, `rlhfkit dpo` and `rlhfkit sft` read (TRL's formats), written
as JSONL or as a Hugging Face dataset directory (`save_to_disk`), which the same readers accept. Pairwise
rows carry the strength (1-3) and TRL's `margin` (`strength_margin`); tied pairs are left out unless asked
for (`TiePolicy`: TRL has no tie column and would train a tie as a win).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from rlhfkit.data.convert import apply_tie_policy
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.feedback.tasks import TASKS, Payload


def export_records(
    store: Store, project: str, consensus: bool = False, ties: Literal["keep", "drop"] = "drop"
) -> tuple[str, list[Payload]]:
    """(record format, records) for a project: each judgment's records with `annotator`, `item_id` and
    `duration_ms` columns, or with `consensus` each item's consensus judgment and its `annotators` count;
    tied pairs only with `ties="keep"`."""
    kind, records = _all_records(store, project, consensus)
    return kind, apply_tie_policy(records, ties)[0]


def _all_records(store: Store, project: str, consensus: bool) -> tuple[str, list[Payload]]:
    target = store.project(project)
    task = TASKS[target.task]
    rows = store.judgments(project)
    if not consensus:
        return task.export_format, [
            {**record, "item_id": row.item.id, "annotator": row.annotator, "duration_ms": row.judgment.duration_ms}
            for row in rows
            for record in task.to_records(row.item, row.payload)
        ]
    if task.consensus is None:
        raise StoreError(f"project {project!r}: {task.name} judgments are free text and have no consensus")
    by_item: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        by_item[row.item.id].append(row)
    records = []
    for item_id, item_rows in by_item.items():
        agreed = task.consensus([row.payload for row in item_rows])
        for record in task.to_records(item_rows[0].item, agreed):
            records.append({**record, "item_id": item_id, "annotators": len(item_rows)})
    return task.export_format, records


def write_records(records: list[Payload], output: str | os.PathLike[str], hf_dataset: bool = False) -> Path:
    """JSONL at `output`, or a `save_to_disk` dataset directory there; written beside and renamed into place,
    so an interrupted export never leaves a half-written file."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    if hf_dataset:
        from datasets import Dataset

        # Every column of every row (a tie has no `strength`): absent values are nulls, read back as absent.
        columns = list(dict.fromkeys(key for record in records for key in record))
        Dataset.from_dict({c: [r.get(c) for r in records] for c in columns}).save_to_disk(str(partial))
    else:
        with partial.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if path.is_dir():
        shutil.rmtree(path)
    partial.replace(path)
    return path
