"""The feedback store: one SQLAlchemy engine (SQLite in WAL mode by default, PostgreSQL by URL) and the
operations the app and the command line share. Each operation is one transaction: it all lands or none of it.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rlhfkit.data.readers import DataError, Row, read_rows
from rlhfkit.data.records import validate_record
from rlhfkit.feedback.schema import Assignment, Item, Judgment, Lease, Project, Setting, User, utcnow
from rlhfkit.feedback.tasks import TASKS, JudgmentError, Payload

DEFAULT_DB = "sqlite:///feedback.db"
LEASE = timedelta(minutes=15)  # how long a shown item stays reserved for its annotator
ROLES = ("admin", "annotator")
_hasher = PasswordHasher()


class StoreError(ValueError):
    """A request the store refuses (unknown name, not assigned, bad import); nothing was written."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; synchronous=FULL fsyncs every commit, so a judgment the
    # server acknowledged survives a kill -9 (and a power cut). The driver's own transaction handling is
    # switched off so that `_begin_immediate` below decides when the write lock is taken.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    # Take the write lock at the start: a read-then-write transaction in deferred mode can fail with
    # SQLITE_BUSY instead of waiting when another writer commits in between.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_engine(url: str = DEFAULT_DB, writer: bool = True) -> Engine:
    """An engine on `url`. On SQLite a writer's transactions take the write lock when they begin; a reader's
    never take it (WAL readers see the last commit and wait for no one)."""
    if url.startswith("sqlite") and ":memory:" in url:
        raise StoreError("an in-memory SQLite store vanishes with its connection; give a file path")
    sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"check_same_thread": False} if sqlite else {})
    if sqlite:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        if writer:
            event.listen(engine, "begin", _begin_immediate)
    return engine


def migrate(engine: Engine) -> None:
    """Upgrade the store's schema to Alembic's head revision (a no-op when it is there already)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(files("rlhfkit.feedback") / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """The operations on one feedback database."""

    def __init__(self, url: str = DEFAULT_DB) -> None:
        self.url = url
        self.engine = open_engine(url)
        migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(open_engine(url, writer=False), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction that may write: committed at the end, rolled back on an exception."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction: it does not queue behind writers for SQLite's write lock."""
        with self._readers() as session:
            yield session

    def secret(self) -> str:
        """The key that signs login cookies, made once per store so every server process shares it."""
        with self.session() as session:
            setting = session.get(Setting, "session_secret")
            if setting is None:
                setting = Setting(key="session_secret", value=secrets.token_urlsafe(32))
                session.add(setting)
            return setting.value

    # --- users ------------------------------------------------------------------------------------------

    def add_user(self, name: str, password: str, role: str = "annotator") -> User:
        if role not in ROLES:
            raise StoreError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise StoreError(f"user {name!r}: the password needs at least 8 characters")
        try:
            with self.session() as session:
                user = User(name=name, password_hash=_hasher.hash(password), role=role)
                session.add(user)
                session.flush()
                return user
        except IntegrityError:
            raise StoreError(f"user {name!r} exists already") from None

    def authenticate(self, name: str, password: str) -> User | None:
        with self.reading() as session:
            user = session.scalar(select(User).where(User.name == name))
            try:
                return user if user is not None and _hasher.verify(user.password_hash, password) else None
            except VerificationError:
                return None

    def user(self, user_id: int) -> User | None:
        with self.reading() as session:
            return session.get(User, user_id)

    def users(self) -> list[User]:
        with self.reading() as session:
            return list(session.scalars(select(User).order_by(User.name)))

    # --- projects ---------------------------------------------------------------------------------------

    def create_project(
        self,
        name: str,
        task: str,
        per_item: int = 1,
        instructions: str = "",
        chat_model: str | None = None,
        rows: Sequence[Row] = (),
    ) -> Project:
        """A new project with items from `rows`; a bad row or name leaves no project behind."""
        if task not in TASKS:
            raise StoreError(f"task {task!r}: expected one of {', '.join(TASKS)}")
        if per_item < 1:
            raise StoreError(f"per_item {per_item}: at least one annotator per item")
        if (task == "chat") != (chat_model is not None):
            raise StoreError("a chat project needs chat_model (the model to talk to); other tasks take none")
        items = self._items(TASKS[task], rows)
        try:
            with self.session() as session:
                project = Project(
                    name=name, task=task, per_item=per_item, instructions=instructions, chat_model=chat_model
                )
                session.add(project)
                session.flush()
                for item in items:
                    item.project_id = project.id
                session.add_all(items)
                return project
        except IntegrityError:
            raise StoreError(f"project {name!r} exists already") from None

    def project(self, name_or_id: str | int) -> Project:
        with self.reading() as session:
            column = Project.id if isinstance(name_or_id, int) else Project.name
            project = session.scalar(select(Project).where(column == name_or_id))
            if project is None:
                raise StoreError(f"no project {name_or_id!r}")
            return project

    def projects(self, user: User | None = None) -> list[Project]:
        """Every project, or those assigned to `user` when they are an annotator."""
        query = select(Project).order_by(Project.id)
        if user is not None and user.role != "admin":
            query = query.join(Assignment).where(Assignment.user_id == user.id)
        with self.reading() as session:
            return list(session.scalars(query))

    def assign(self, project: str, names: Sequence[str]) -> None:
        with self.session() as session:
            project_id = self.project(project).id
            for name in names:
                user = session.scalar(select(User).where(User.name == name))
                if user is None:
                    raise StoreError(f"no user {name!r}")
                session.merge(Assignment(project_id=project_id, user_id=user.id))

    def is_assigned(self, session: Session, project_id: int, user: User) -> bool:
        return user.role == "admin" or session.get(Assignment, (project_id, user.id)) is not None

    # --- items ------------------------------------------------------------------------------------------

    def add_items(self, project: str, rows: Sequence[Row]) -> int:
        """Add items from rows with `prompt` and optional `responses` (or `completion`), `media`, `gold`.

        Every row is checked before any is written, so a bad row names itself and leaves the project as it was.
        """
        target = self.project(project)
        items = self._items(TASKS[target.task], rows)
        if not items:
            raise DataError(f"project {project!r}: no items given")
        with self.session() as session:
            for item in items:
                item.project_id = target.id
            session.add_all(items)
        return len(items)

    def import_items(self, project: str, path: str | Path) -> int:
        """Items from a dataset file (JSONL, JSON, Parquet, saved dataset), each row checked at its file:line."""
        return self.add_items(project, list(read_rows(path)))

    @classmethod
    def _items(cls, task: Any, rows: Sequence[Row]) -> list[Item]:
        """Items of `rows`; for one-reply tasks (rate, thumbs, edit) a row of K candidates gives K items."""
        return [cls._item(task, data, location) for row in rows for data, location in cls._split(task, row)]

    @staticmethod
    def _split(task: Any, row: Row) -> list[tuple[dict[str, Any], str]]:
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
    def _item(task: Any, row: dict[str, Any], location: str) -> Item:
        responses = row.get("responses")
        if responses is None:
            responses = [row["completion"]] if "completion" in row else []
        record = (
            validate_record({**row, "responses": responses}, "candidates", location)
            if len(responses) >= 2
            else validate_record(row, "prompt", location)
        )
        for index, response in enumerate(responses):
            if not isinstance(response, str | list):
                raise DataError(f"{location}: field 'responses.{index}': expected text or chat messages")
        problem = task.check_item(responses)
        if problem:
            raise DataError(f"{location}: field 'responses': {problem}")
        media = row.get("media")
        if media is not None and (not isinstance(media, list) or len(media) != len(responses)):
            raise DataError(f"{location}: field 'media': expected one path per response ({len(responses)})")
        gold = row.get("gold")
        if gold is not None:
            try:
                gold = task.from_form(gold, list(range(len(responses))))
            except JudgmentError as exc:
                raise DataError(f"{location}: field 'gold': {exc}") from None
        return Item(
            prompt=_plain(record.prompt),
            responses=[_plain(r) for r in responses],
            media=media,
            gold=gold,
            source={"location": location, **({"models": row["models"]} if "models" in row else {})},
        )

    # --- labelling --------------------------------------------------------------------------------------

    def next_item(self, project_id: int, user: User) -> Item | None:
        """The item to show `user` next, leased to them: theirs if they hold one, else the item closest to
        done among those still short of `per_item` judgments (counting other annotators' live leases)."""
        now = utcnow()
        with self.session() as session:
            # The project row's lock makes handing out items one at a time per project on PostgreSQL, as
            # SQLite's BEGIN IMMEDIATE does for the whole store: two annotators never draw the same last slot.
            project = session.get(Project, project_id, with_for_update=True)
            if project is None or not self.is_assigned(session, project_id, user):
                raise StoreError("this project is not assigned to you")
            held = session.scalar(
                select(Lease.item_id)
                .join(Item, Item.id == Lease.item_id)
                .where(Item.project_id == project_id, Lease.user_id == user.id, Lease.expires_at > now)
                .where(
                    ~select(Judgment.id).where(Judgment.item_id == Lease.item_id, Judgment.user_id == user.id).exists()
                )
            )
            item_id = held if held is not None else self._open_item(session, project, user.id, now)
            if item_id is None:
                return None
            lease = session.get(Lease, (item_id, user.id))
            if lease is None or lease.expires_at <= now:
                session.merge(Lease(item_id=item_id, user_id=user.id, served_at=now, expires_at=now + LEASE))
            return session.get(Item, item_id)

    @staticmethod
    def _open_item(session: Session, project: Project, user_id: int, now: Any) -> int | None:
        judged = select(Judgment.item_id, func.count().label("n")).group_by(Judgment.item_id).subquery()
        leased = (
            select(Lease.item_id, func.count().label("n"))
            .where(Lease.expires_at > now, Lease.user_id != user_id)
            .group_by(Lease.item_id)
            .subquery()
        )
        done = func.coalesce(judged.c.n, 0)
        query = (
            select(Item.id)
            .outerjoin(judged, judged.c.item_id == Item.id)
            .outerjoin(leased, leased.c.item_id == Item.id)
            .where(Item.project_id == project.id)
            .where(done + func.coalesce(leased.c.n, 0) < project.per_item)
            .where(~select(Judgment.id).where(Judgment.item_id == Item.id, Judgment.user_id == user_id).exists())
            .order_by(done.desc(), Item.id)
            .limit(1)
        )
        return session.scalar(query)

    @staticmethod
    def display_order(item: Item, user_id: int) -> list[int]:
        """The order `user_id` sees the item's replies in: shuffled, the same on every reload."""
        order = list(range(len(item.responses)))
        random.Random(f"{item.id}:{user_id}").shuffle(order)
        return order

    def submit(self, item_id: int, user: User, form: dict[str, Any]) -> tuple[Judgment, bool]:
        """Store `user`'s judgment of an item from a submitted form; (judgment, False) when one was already
        stored (a double click, a retried request): the first stays and nothing else is written."""
        with self.session() as session:
            item = session.get(Item, item_id)
            if item is None or not self.is_assigned(session, item.project_id, user):
                raise StoreError(f"item {item_id} is not assigned to you")
            existing = session.scalar(select(Judgment).where(Judgment.item_id == item_id, Judgment.user_id == user.id))
            if existing is not None:
                return existing, False
            order = self.display_order(item, user.id)
            payload = TASKS[item.project.task].from_form(form, order)
            lease = session.get(Lease, (item_id, user.id))
            now = utcnow()
            served = lease.served_at if lease is not None else now
            judgment = Judgment(
                item_id=item_id,
                user_id=user.id,
                payload=payload,
                display_order=order,
                duration_ms=int((now - served).total_seconds() * 1000),
                created_at=now,
            )
            session.add(judgment)
            if lease is not None:
                session.delete(lease)
            session.flush()
            return judgment, True

    # --- reading back -----------------------------------------------------------------------------------

    def judgments(self, project: str | int) -> list[JudgmentRow]:
        """Every raw judgment of a project, oldest first, with its item and annotator."""
        project_id = self.project(project).id
        with self.reading() as session:
            rows = session.execute(
                select(Judgment, Item, User.name)
                .join(Item, Item.id == Judgment.item_id)
                .join(User, User.id == Judgment.user_id)
                .where(Item.project_id == project_id)
                .order_by(Judgment.id)
            )
            return [JudgmentRow(judgment, item, name) for judgment, item, name in rows]

    def progress(self, project_id: int, user: User) -> Progress:
        with self.reading() as session:
            project = session.get(Project, project_id)
            assert project is not None, project_id
            counts = select(Judgment.item_id, func.count().label("n")).group_by(Judgment.item_id).subquery()
            items = session.scalar(select(func.count()).where(Item.project_id == project_id)) or 0
            complete = session.scalar(
                select(func.count())
                .select_from(Item)
                .join(counts, counts.c.item_id == Item.id)
                .where(Item.project_id == project_id, counts.c.n >= project.per_item)
            )
            mine = session.scalar(
                select(func.count())
                .select_from(Judgment)
                .join(Item, Item.id == Judgment.item_id)
                .where(Item.project_id == project_id, Judgment.user_id == user.id)
            )
            return Progress(items, complete or 0, mine or 0)

    def items(self, project: str | int) -> list[Item]:
        project_id = self.project(project).id
        with self.reading() as session:
            return list(session.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id)))


@dataclass(frozen=True)
class Progress:
    items: int
    complete: int  # items judged by `per_item` annotators
    mine: int  # judgments by the asking user


@dataclass(frozen=True)
class JudgmentRow:
    judgment: Judgment
    item: Item
    annotator: str

    @property
    def payload(self) -> Payload:
        return self.judgment.payload


def _plain(value: Any) -> Any:
    """Validated text back to JSON: strings stay, chat messages become dicts."""
    return value if isinstance(value, str) else [message.model_dump() for message in value]
