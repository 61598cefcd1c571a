"""Handing out items and taking judgments. An item is leased to the annotator it is shown to; a judgment is
taken only from the holder of a lease on that item (or, for a chat turn, from the labeler who wrote it), in
the lease's slot, so no item gets more than `per_item` judgments, however requests race."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.schema import Item, Judgment, Lease, Project, User, utcnow
from rlhfkit.feedback.store.base import Conflict, Forbidden, NotFound
from rlhfkit.feedback.store.projects import Projects
from rlhfkit.feedback.tasks import TASKS, Payload

LEASE = timedelta(minutes=15)  # how long a shown item stays reserved for its annotator


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


class Labelling(Projects):
    def next_item(self, project_id: int, user: User) -> Item | None:
        """The item to show `user` next, leased to them: theirs if they hold one, else the item closest to
        done among those still short of `per_item` judgments (counting other annotators' live leases)."""
        now = utcnow()
        with self.session() as session:
            # The project row's lock makes handing out items one at a time per project on PostgreSQL, as
            # SQLite's BEGIN IMMEDIATE does for the whole store: two annotators never draw the same last slot.
            project = session.get(Project, project_id, with_for_update=True)
            if project is None or not self.is_assigned(session, project_id, user):
                raise Forbidden("this project is not assigned to you")
            if project.task == "chat":
                raise Conflict("a chat project's items are the turns of your own conversations: open its chat page")
            lease = session.scalar(
                select(Lease)
                .join(Item, Item.id == Lease.item_id)
                .where(Item.project_id == project_id, Lease.user_id == user.id)
                .order_by(Lease.served_at)
            )
            if lease is None:
                lease = self._new_lease(session, project, user.id, now)
                if lease is None:
                    return None
            elif lease.expires_at <= now:  # theirs still (no one took its slot): shown afresh
                lease.served_at, lease.expires_at = now, now + LEASE
            return session.get(Item, lease.item_id)

    @staticmethod
    def _new_lease(session: Session, project: Project, user_id: int, now: Any) -> Lease | None:
        """A lease on the open item closest to done, in its lowest free slot (an expired lease of someone
        else's in that slot is taken over)."""
        judged = select(Judgment.item_id, func.count().label("n")).group_by(Judgment.item_id).subquery()
        leased = (
            select(Lease.item_id, func.count().label("n"))
            .where(Lease.expires_at > now, Lease.user_id != user_id)
            .group_by(Lease.item_id)
            .subquery()
        )
        done = func.coalesce(judged.c.n, 0)
        item_id = session.scalar(
            select(Item.id)
            .outerjoin(judged, judged.c.item_id == Item.id)
            .outerjoin(leased, leased.c.item_id == Item.id)
            .where(Item.project_id == project.id)
            .where(done + func.coalesce(leased.c.n, 0) < project.per_item)
            .where(~select(Judgment.id).where(Judgment.item_id == Item.id, Judgment.user_id == user_id).exists())
            .order_by(done.desc(), Item.id)
            .limit(1)
        )
        if item_id is None:
            return None
        taken = set(session.scalars(select(Judgment.slot).where(Judgment.item_id == item_id)))
        taken |= set(session.scalars(select(Lease.slot).where(Lease.item_id == item_id, Lease.expires_at > now)))
        slot = min(set(range(project.per_item)) - taken)
        session.execute(delete(Lease).where(Lease.item_id == item_id, Lease.slot == slot))
        lease = Lease(item_id=item_id, user_id=user_id, slot=slot, served_at=now, expires_at=now + LEASE)
        session.add(lease)
        session.flush()
        return lease

    @staticmethod
    def display_order(item: Item, user_id: int) -> list[int]:
        """The order `user_id` sees the item's replies in: shuffled, the same on every reload."""
        order = list(range(len(item.responses)))
        random.Random(f"{item.id}:{user_id}").shuffle(order)
        return order

    def submit(
        self, item_id: int, user: User, form: dict[str, Any], project_id: int | None = None
    ) -> tuple[Judgment, bool]:
        """Store `user`'s judgment of an item from a submitted form; (judgment, False) when one was already
        stored (a double click, a retried request): the first stays and nothing else is written. Refused
        (Conflict) unless `user` holds the item's lease, or wrote the chat turn; with `project_id`, the item
        must be that project's."""
        with self.session() as session:
            # Locking the item row queues concurrent judgments of one item on PostgreSQL (SQLite's writer
            # lock already does); the slot constraints hold even without it.
            item = session.get(Item, item_id, with_for_update=True)
            if item is None or not self.is_assigned(session, item.project_id, user):
                raise Forbidden(f"item {item_id} is not assigned to you")
            if project_id is not None and item.project_id != project_id:
                raise NotFound(f"project {project_id} has no item {item_id}")
            existing = session.scalar(select(Judgment).where(Judgment.item_id == item_id, Judgment.user_id == user.id))
            if existing is not None:
                return existing, False
            slot, served = self._claim(session, item, user)
            order = self.display_order(item, user.id)
            payload = TASKS[item.project.task].from_form(form, order)
            now = utcnow()
            judgment = Judgment(
                item_id=item_id,
                user_id=user.id,
                slot=slot,
                payload=payload,
                display_order=order,
                duration_ms=max(0, int((now - served).total_seconds() * 1000)),
                created_at=now,
            )
            session.add(judgment)
            session.flush()
            return judgment, True

    @staticmethod
    def _claim(session: Session, item: Item, user: User) -> tuple[int, Any]:
        """(slot, time shown) of the judgment `user` may give on `item`, its lease released."""
        if item.project.task == "chat":
            if item.source.get("user") != user.id:
                raise Conflict(f"item {item.id} is a turn of another labeler's conversation")
            return 0, item.created_at
        lease = session.get(Lease, (item.id, user.id))
        if lease is None:
            raise Conflict(
                f"item {item.id} is not leased to you (never shown to you, or your lease expired and went to "
                "another annotator): fetch your next item"
            )
        slot, served = lease.slot, lease.served_at
        session.delete(lease)
        return slot, served

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
            project = session.get_one(Project, project_id)
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
