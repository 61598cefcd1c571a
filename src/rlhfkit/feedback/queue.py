"""Human labels for the pipeline: put items in front of the feedback app's annotators and wait for them.

The online loop and `rlhfkit control` call `request_judgments`: it creates the project once (so a
restarted run picks up the same project and the labels already given) and polls the store until every item
has `per_item` judgments, then returns each item's consensus. Annotators work in `rlhfkit serve` meanwhile.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

from pydantic import Field

from rlhfkit.config import Config
from rlhfkit.data.readers import Row
from rlhfkit.feedback.schema import Item
from rlhfkit.feedback.store import DEFAULT_DB, Store, StoreError
from rlhfkit.feedback.tasks import TASKS, Payload
from rlhfkit.training.progress import progress_bar


class HumanLabelSettings(Config):
    """Where human labels come from: a feedback store that `rlhfkit serve` is serving to annotators."""

    db: str = Field(DEFAULT_DB, description="the feedback store's SQLAlchemy URL (the one `rlhfkit serve` uses)")
    project: str = Field("rlhfkit", description="project name prefix; each request makes PREFIX-SUFFIX")
    annotators: list[str] = Field(default_factory=list, description="users assigned to each new project")
    per_item: int = Field(1, ge=1, description="annotators per item; their consensus becomes the label")
    instructions: str = Field("", description="shown to annotators above every item")
    poll_seconds: float = Field(5.0, gt=0, description="how often the store is checked for new judgments")
    timeout_minutes: float | None = Field(None, gt=0, description="give up after this long (none: wait on)")


def request_judgments(
    settings: HumanLabelSettings, suffix: str, task: str, rows: Sequence[Row]
) -> list[tuple[Item, Payload]]:
    """Each row's item and its annotators' consensus, in row order, once all are judged.

    The project `settings.project-suffix` is created with `rows` the first time; later calls (a resumed
    run) find it and keep waiting, without adding the rows again.
    """
    store = Store(settings.db)
    name = f"{settings.project}-{suffix}"
    try:
        store.project(name)
    except StoreError:
        store.create_project(name, task, settings.per_item, settings.instructions, rows=rows)
        store.assign(name, settings.annotators)
    items = store.items(name)
    deadline = None if settings.timeout_minutes is None else time.monotonic() + 60 * settings.timeout_minutes
    with progress_bar() as bar:
        progress = bar.add_task(f"waiting for labels in project {name!r}", total=len(items))
        while True:
            payloads: dict[int, list[Payload]] = defaultdict(list)
            for row in store.judgments(name):
                payloads[row.item.id].append(row.payload)
            complete = sum(len(payloads[item.id]) >= settings.per_item for item in items)
            bar.update(progress, completed=complete)
            if complete == len(items):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"project {name!r}: {complete} of {len(items)} items judged when time ran out")
            time.sleep(settings.poll_seconds)
    consensus = TASKS[task].consensus
    assert consensus is not None, f"task {task!r} has no consensus"  # callers ask for rank or pairwise judgments
    return [(item, consensus(payloads[item.id][: settings.per_item])) for item in items]
