"""The feedback store's tables (SQLAlchemy 2 ORM). Alembic's migrations in `migrations/` create them.

Every raw judgment is its own row: who gave it, how long it took, when, and the order the candidates
were shown in. Consensus, agreement and exports are computed from these rows, never stored instead of them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # naive UTC: SQLite keeps no time zone


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, Any: JSON}  # noqa: RUF012


class Setting(Base):
    """Key/value settings shared by every server process on the store (the session-signing secret)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # "admin" or "annotator"
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # False: deactivated, cannot sign in
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    """A signed-in browser or API client; deleting the row signs it out (logout, password change, deactivation).
    Only the SHA-256 of the session token is kept, so a copy of the database signs no one in."""

    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class ApiToken(Base):
    """A user's bearer token for scripts (hashed like sessions); revoked tokens stay listed."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEntry(Base):
    """An admin action: who (a user name, or "cli"), what, on which user or project."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(256))


class Assignment(Base):
    """An annotator may see and judge a project's items only when assigned to it."""

    __tablename__ = "assignments"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task: Mapped[str] = mapped_column(String(32))  # a key of rlhfkit.feedback.tasks.TASKS
    instructions: Mapped[str] = mapped_column(Text, default="")
    per_item: Mapped[int] = mapped_column(Integer, default=1)  # annotators wanted per item
    chat_model: Mapped[str | None] = mapped_column(String(512), nullable=True)  # chat task: the model talked to
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    items: Mapped[list[Item]] = relationship(back_populates="project", cascade="all, delete-orphan")


class Item(Base):
    """A prompt with its candidate replies (none for a demonstration), optional clips, optional gold answer."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[Any] = mapped_column(JSON)  # text or chat messages, as in the training records
    responses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    media: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # per reply: its copy in the media folder
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the expected judgment payload
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # file:line, models, chat conversation
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    project: Mapped[Project] = relationship(back_populates="items")


class Lease(Base):
    """An item shown to an annotator and not yet judged; counts towards `per_item` until it expires, and after
    that until another annotator is handed its slot. `slot` (0 .. per_item - 1) is the judgment it may become:
    two leases, or two judgments, of one item never share a slot, so the database itself caps judgments at
    `per_item` however requests interleave."""

    __tablename__ = "leases"
    __table_args__ = (Index("one_lease_per_slot", "item_id", "slot", unique=True),)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer)
    served_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Judgment(Base):
    """One annotator's raw judgment of one item; `payload` indexes replies in the item's stored order."""

    __tablename__ = "judgments"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id", name="one_judgment_per_annotator"),
        Index("one_judgment_per_slot", "item_id", "slot", unique=True),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)  # the lease's slot it was given in
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    display_order: Mapped[list[Any]] = mapped_column(JSON)  # display slot -> stored reply index
    duration_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
