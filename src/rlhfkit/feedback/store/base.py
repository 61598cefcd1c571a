"""The store's engine and transactions (SQLite in WAL mode by default, PostgreSQL by URL), its errors, and
the audit log every admin action writes to."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from rlhfkit.feedback.media import MediaFolder, default_media_root
from rlhfkit.feedback.schema import AuditEntry, Setting

DEFAULT_DB = "sqlite:///feedback.db"
CLI_ACTOR = "cli"  # the audit log's actor for actions from the command line and the Python API


class StoreError(ValueError):
    """A request the store refuses (unknown name, bad import, bad field); nothing was written."""


class NotFound(StoreError):
    """No such project or item."""


class Forbidden(StoreError):
    """Not this user's to see or judge."""


class Conflict(StoreError):
    """Not now: the item was not handed to this annotator, or their lease went to someone else."""


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


class StoreBase:
    """One feedback database and its media folder: transactions, the shared secret, the audit log."""

    def __init__(self, url: str = DEFAULT_DB, media_root: str | Path | None = None) -> None:
        self.url = url
        self.engine = open_engine(url)
        migrate(self.engine)
        self.media = MediaFolder(media_root if media_root is not None else default_media_root(url))
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
        """The key that signs login cookies, made once per store so every server process shares it. A cookie
        signed with it still needs a live session row (`Accounts.session_user`) to sign anyone in."""
        with self.session() as session:
            setting = session.get(Setting, "session_secret")
            if setting is None:
                setting = Setting(key="session_secret", value=secrets.token_urlsafe(32))
                session.add(setting)
            return setting.value

    @staticmethod
    def _audit(session: Session, actor: str, action: str, target: str) -> None:
        session.add(AuditEntry(actor=actor, action=action, target=target[:256]))

    def audit(self, actor: str, action: str, target: str) -> None:
        """Record an admin action that changes nothing else (an export)."""
        with self.session() as session:
            self._audit(session, actor, action, target)

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The latest admin actions, newest first."""
        with self.reading() as session:
            return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))
