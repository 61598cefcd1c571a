"""Projects, assignments and items: all-or-nothing imports, each row checked at its file:line, media copied
into the store's media folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhfkit.data.readers import DataError, Row, read_rows
from rlhfkit.data.records import validate_record
from rlhfkit.feedback.media import check_source
from rlhfkit.feedback.schema import Assignment, Item, Project, User
from rlhfkit.feedback.store.base import CLI_ACTOR, NotFound, StoreBase, StoreError
from rlhfkit.feedback.tasks import TASKS, JudgmentError, Task

PROJECT_NAME_CHARS = 128


class Projects(StoreBase):
    def create_project(
        self,
        name: str,
        task: str,
        per_item: int = 1,
        instructions: str = "",
        chat_model: str | None = None,
        rows: Sequence[Row] = (),
        actor: str = CLI_ACTOR,
    ) -> Project:
        """A new project with items from `rows`; a bad row or name leaves no project behind."""
        if not name.strip() or len(name) > PROJECT_NAME_CHARS:
            raise StoreError(f"field 'name': 1-{PROJECT_NAME_CHARS} characters, not only spaces")
        if task not in TASKS:
            raise StoreError(f"field 'task': {task!r} is not one of {', '.join(TASKS)}")
        if per_item < 1:
            raise StoreError(f"field 'per_item': {per_item}; at least one annotator per item")
        if (task == "chat") != (chat_model is not None):
            raise StoreError("field 'chat_model': a chat project needs the model to talk to; other tasks take none")
        items = self._items(TASKS[task], rows)
        try:
            with self.session() as session:
                project = Project(
                    name=name, task=task, per_item=per_item, instructions=instructions, chat_model=chat_model
                )
                session.add(project)
                session.flush()
                self._add(session, project.id, items)
                self._audit(session, actor, "create project", f"{name} ({task}, {len(items)} items)")
                return project
        except IntegrityError:
            raise StoreError(f"project {name!r} exists already") from None

    def project(self, name_or_id: str | int) -> Project:
        with self.reading() as session:
            column = Project.id if isinstance(name_or_id, int) else Project.name
            project = session.scalar(select(Project).where(column == name_or_id))
            if project is None:
                raise NotFound(f"no project {name_or_id!r}")
            return project

    def projects(self, user: User | None = None) -> list[Project]:
        """Every project, or those assigned to `user` when they are an annotator."""
        query = select(Project).order_by(Project.id)
        if user is not None and user.role != "admin":
            query = query.join(Assignment).where(Assignment.user_id == user.id)
        with self.reading() as session:
            return list(session.scalars(query))

    def assign(self, project: str, names: Sequence[str], actor: str = CLI_ACTOR) -> None:
        with self.session() as session:
            project_id = self.project(project).id
            for name in names:
                user = session.scalar(select(User).where(User.name == name))
                if user is None:
                    raise NotFound(f"no user {name!r}")
                session.merge(Assignment(project_id=project_id, user_id=user.id))
            if names:
                self._audit(session, actor, "assign", f"{project}: {', '.join(names)}")

    @staticmethod
    def is_assigned(session: Session, project_id: int, user: User) -> bool:
        return user.role == "admin" or session.get(Assignment, (project_id, user.id)) is not None

    def add_items(self, project: str, rows: Sequence[Row], actor: str = CLI_ACTOR) -> int:
        """Add items from rows with `prompt` and optional `responses` (or `completion`), `media`, `gold`.

        Every row is checked before any is written, so a bad row names itself and leaves the project as it was.
        """
        target = self.project(project)
        items = self._items(TASKS[target.task], rows)
        if not items:
            raise DataError(f"project {project!r}: no items given")
        with self.session() as session:
            self._add(session, target.id, items)
            self._audit(session, actor, "import items", f"{project}: {len(items)} items")
        return len(items)

    def import_items(self, project: str, path: str | Path, actor: str = CLI_ACTOR) -> int:
        """Items from a dataset file (JSONL, JSON, Parquet, saved dataset), each row checked at its file:line."""
        return self.add_items(project, list(read_rows(path)), actor)  # read_rows names a non-UTF-8 line

    def items(self, project: str | int) -> list[Item]:
        project_id = self.project(project).id
        with self.reading() as session:
            return list(session.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id)))

    def _add(self, session: Session, project_id: int, items: list[Item]) -> None:
        """Items into the project, their checked media files copied into its media folder."""
        for item in items:
            item.project_id = project_id
            if item.media is not None:
                item.media = [self.media.add(project_id, Path(path)) for path in item.media]
        session.add_all(items)

    @classmethod
    def _items(cls, task: Task, rows: Sequence[Row]) -> list[Item]:
        """Items of `rows`; for one-reply tasks (rate, thumbs, edit) a row of K candidates gives K items."""
        return [cls._item(task, data, location) for row in rows for data, location in cls._split(task, row)]

    @staticmethod
    def _split(task: Task, row: Row) -> list[tuple[dict[str, Any], str]]:
        if not isinstance(row.data, dict):
            raise DataError(f"{row.location}: expected an object with 'prompt' and 'responses'")
        responses = row.data.get("responses")
        if (
            task.responses[1] != 1
            or not isinstance(responses, list)
            or len(responses) < 2
            or {"media", "gold"} & row.data.keys()
        ):
            return [(row.data, row.location)]
        return [({**row.data, "responses": [r]}, f"{row.location}#{k + 1}") for k, r in enumerate(responses)]

    @staticmethod
    def _item(task: Task, row: dict[str, Any], location: str) -> Item:
        responses = row.get("responses")
        if responses is None:
            responses = [row["completion"]] if "completion" in row else []
        if not isinstance(responses, list):
            raise DataError(f"{location}: field 'responses': expected a list of replies")
        problem = task.check_item(responses)
        if problem:
            raise DataError(f"{location}: field 'responses': {problem}")
        prompt, replies = _texts(row, responses, location)
        media = row.get("media")
        if media is not None:
            if not isinstance(media, list) or len(media) != len(responses):
                raise DataError(f"{location}: field 'media': expected one path per response ({len(responses)})")
            media = [str(check_source(path, location, f"media[{k}]")) for k, path in enumerate(media)]
        gold = row.get("gold")
        if gold is not None:
            try:
                gold = task.from_form(gold, list(range(len(responses))))
            except JudgmentError as exc:
                raise DataError(f"{location}: field 'gold': {exc}") from None
        return Item(
            prompt=prompt,
            responses=replies,
            media=media,
            gold=gold,
            source={"location": location, **({"models": row["models"]} if "models" in row else {})},
        )


def _texts(row: dict[str, Any], responses: list[Any], location: str) -> tuple[Any, list[Any]]:
    """The prompt and replies validated as training records' texts (plain text or chat messages) and
    stored as plain JSON."""
    if len(responses) >= 2:
        record: Any = validate_record({**row, "responses": responses}, "candidates", location)
        return _plain(record.prompt), [_plain(r) for r in record.responses]
    prompt_record: Any = validate_record(row, "prompt", location)
    prompt = _plain(prompt_record.prompt)
    if not responses:
        return prompt, []
    record = validate_record({"prompt": prompt, "completion": responses[0]}, "sft", location)  # the one reply
    return prompt, [_plain(record.completion)]


def _plain(value: Any) -> Any:
    """Validated text back to JSON: strings stay, chat messages become dicts."""
    return value if isinstance(value, str) else [message.model_dump() for message in value]
