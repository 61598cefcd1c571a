"""The chat task: a labeler talks with a model, and at each turn picks the better of two sampled replies.

Each turn is stored as a pairwise item (the conversation so far as chat messages, and the two replies) judged
by the labeler who wrote it; the conversation goes on from the reply they picked (the first shown on a tie).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import select

from rlhfkit.feedback.schema import Item, Judgment, Project, User
from rlhfkit.feedback.store import Conflict, Store
from rlhfkit.generation.sampling import SamplingSettings, render_prompt, sample
from rlhfkit.models.loading import context_length, load_model, load_tokenizer

SETTINGS = SamplingSettings(max_new_tokens=64, temperature=0.9)
MAX_MESSAGE_CHARS = 4000  # one message; the model sees only what fits its window anyway


@dataclass(frozen=True)
class ConversationState:
    messages: list[dict[str, str]]  # the conversation so far, picked replies included
    pending: Item | None  # the latest turn, while its two replies wait for a pick


@lru_cache(maxsize=2)
def _model(name_or_path: str) -> tuple[Any, Any]:
    model = load_model(name_or_path)
    model.eval()
    return model, load_tokenizer(name_or_path)


def _turns(store: Store, project_id: int, user: User, conversation: str | None) -> list[tuple[Item, Judgment | None]]:
    if conversation is None:
        return []
    with store.reading() as session:
        items = session.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id)).all()
        turns = [i for i in items if i.source.get("conversation") == conversation and i.source.get("user") == user.id]
        judgments = {
            j.item_id: j for j in session.scalars(select(Judgment).where(Judgment.item_id.in_([i.id for i in turns])))
        }
        return [(item, judgments.get(item.id)) for item in turns]


def picked_reply(item: Item, judgment: Judgment, order: list[int]) -> str:
    payload = judgment.payload
    return item.responses[payload["preferred"] if payload["outcome"] == "preferred" else order[0]]


def conversation_state(store: Store, project_id: int, user: User, conversation: str | None) -> ConversationState:
    turns = _turns(store, project_id, user, conversation)
    if not turns:
        return ConversationState([], None)
    last, judgment = turns[-1]
    if judgment is None:
        return ConversationState(list(last.prompt), last)
    return ConversationState(
        [*last.prompt, {"role": "assistant", "content": picked_reply(last, judgment, judgment.display_order)}], None
    )


def say(store: Store, project: Project, user: User, conversation: str, message: str) -> Item:
    """Add the labeler's message, sample two replies to the conversation, store the turn as an item."""
    if project.task != "chat" or not project.chat_model:
        raise Conflict(f"project {project.name!r} is a {project.task} project, not a chat")
    state = conversation_state(store, project.id, user, conversation)
    if state.pending is not None:
        return state.pending  # pick a reply first; a resent message does not fork the conversation
    messages = [*state.messages, {"role": "user", "content": message}]
    model, tokenizer = _model(project.chat_model)
    context = context_length(model.config) or 2048
    shown = fit_to_window(tokenizer, messages, context - SETTINGS.max_new_tokens)
    turn = len(messages) // 2
    seed = zlib.crc32(f"{conversation}:{turn}".encode())
    replies = sample(model, tokenizer, [shown, shown], SETTINGS, seeds=[seed, seed + 1]).texts
    with store.session() as session:
        item = Item(
            project_id=project.id,
            prompt=messages,
            responses=replies,
            source={"conversation": conversation, "user": user.id, "turn": turn, "model": project.chat_model},
        )
        session.add(item)
        session.flush()
        return item


def fit_to_window(tokenizer: Any, messages: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """The latest messages whose rendered prompt fits `budget` tokens: the oldest exchanges (user and
    assistant) are dropped first, then the start of the one message left is cut (the model reads its end)."""

    def length(shown: list[dict[str, str]]) -> int:
        return len(tokenizer(render_prompt(tokenizer, shown))["input_ids"])

    shown = list(messages)
    while len(shown) > 2 and length(shown) > budget:
        shown = shown[2:]
    if length(shown) <= budget:
        return shown
    last = shown[-1]
    ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    keep = max(0, budget - length([{**last, "content": ""}]))
    while keep > 0 and length([{**last, "content": tokenizer.decode(ids[-keep:])}]) > budget:
        keep -= 1  # decoding and encoding again can merge tokens differently
    return [{**last, "content": tokenizer.decode(ids[-keep:]) if keep else ""}]
