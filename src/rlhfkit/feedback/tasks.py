"""The labelling task types: what an item must hold, what a judgment says, and the record it exports to.

A judgment's payload always indexes replies in the item's stored order; the page shows them in a shuffled
order (`display_order`, slot -> stored index), and `from_form` maps the slots back. Interfaces follow
Anthropic's HH comparison scale (Bai et al. 2022, arXiv:2204.05862), InstructGPT's ranking and 1-7 rating
with metadata flags (Ouyang et al. 2022, arXiv:2203.02155) and Open-Assistant's ranking with ties.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import median_low
from typing import Any

from rlhfkit.data.records import INSTRUCTGPT_FLAGS
from rlhfkit.scores import Judgements, bradley_terry, competition_ranks, win_matrix

Payload = dict[str, Any]
Form = Mapping[str, Any]  # a submitted form: name -> value, or name -> list of values for `flags`

PAIR_OUTCOMES = ("preferred", "tie", "both_bad", "unsure")
STRENGTHS = {1: "slightly better", 2: "better", 3: "much better"}


class JudgmentError(ValueError):
    """A submission that does not fit its task; the message names the field."""


WHOLE_NUMBER = re.compile(r"\s*-?[0-9]{1,9}\s*")  # ASCII digits only: int() also reads "٣" and "²"


def _field(form: Form, name: str) -> str:
    value = form.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        if value is None:
            raise JudgmentError(f"field '{name}': required")
        raise JudgmentError(f"field '{name}': expected text, got {type(value).__name__}")
    if str(value).strip() == "":
        raise JudgmentError(f"field '{name}': required")
    return str(value)


def _integer(form: Form, name: str, low: int, high: int) -> int:
    text = _field(form, name)
    if not WHOLE_NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise JudgmentError(f"field '{name}': expected a whole number from {low} to {high}, got {text!r}")
    return int(text)


# --- what a submitted form means, per task -------------------------------------------------------------


def pairwise_from_form(form: Form, order: Sequence[int]) -> Payload:
    """`choice` is 'A:s' or 'B:s' (slot A or B better, strength s in 1-3), 'tie', 'both_bad' or 'unsure'."""
    choice = _field(form, "choice")
    if choice in PAIR_OUTCOMES[1:]:
        return {"outcome": choice, "preferred": None, "strength": None}
    slot, _, strength = choice.partition(":")
    if slot not in ("A", "B") or strength not in {str(s) for s in STRENGTHS}:
        raise JudgmentError(f"field 'choice': expected A:1-3, B:1-3, tie, both_bad or unsure, got {choice!r}")
    return {"outcome": "preferred", "preferred": order["AB".index(slot)], "strength": int(strength)}


def rank_from_form(form: Form, order: Sequence[int]) -> Payload:
    """`rank_<slot>` per shown reply: 1 is best, equal ranks are ties; stored as dense ranks 1, 2, ..."""
    ranks = [0] * len(order)
    for slot, stored in enumerate(order):
        ranks[stored] = _integer(form, f"rank_{slot}", 1, len(order))
    dense = {rank: position + 1 for position, rank in enumerate(sorted(set(ranks)))}
    return {"ranks": [dense[rank] for rank in ranks]}


def likert_from_form(form: Form, order: Sequence[int]) -> Payload:
    flags = form.get("flags") or []
    flags = [flags] if isinstance(flags, str) else flags
    if not isinstance(flags, list | tuple) or not all(isinstance(flag, str) for flag in flags):
        raise JudgmentError(f"field 'flags': expected a list of flag names, got {flags!r}")
    unknown = sorted(set(flags) - set(INSTRUCTGPT_FLAGS))
    if unknown:
        raise JudgmentError(f"field 'flags': unknown flag(s) {', '.join(unknown)}")
    return {"score": _integer(form, "score", 1, 7), "flags": [f for f in INSTRUCTGPT_FLAGS if f in flags]}


def thumbs_from_form(form: Form, order: Sequence[int]) -> Payload:
    choice = _field(form, "choice")
    if choice not in ("up", "down"):
        raise JudgmentError(f"field 'choice': expected up or down, got {choice!r}")
    return {"up": choice == "up"}


def text_from_form(name: str) -> Callable[[Form, Sequence[int]], Payload]:
    def parse(form: Form, order: Sequence[int]) -> Payload:
        return {name: _field(form, name).replace("\r\n", "\n").strip()}

    return parse


# --- the training records a judgment becomes (TRL's formats, plus provenance columns) -------------------


def strength_margin(strength: int) -> float:
    """TRL's `margin` for a strength: strength / 3, Llama 2's small margins (Touvron et al. 2023,
    arXiv:2307.09288, table 27): "slightly better" 1/3, "better" 2/3, "much better" 1."""
    return strength / max(STRENGTHS)


def pairwise_records(item: Any, payload: Payload) -> list[Payload]:
    """A preference row with its strength and TRL's `margin` (ties kept as `tie`; the export leaves them out
    unless asked); 'both bad' and 'can't tell' say nothing about the order."""
    if payload["outcome"] == "tie":
        return [{"prompt": item.prompt, "chosen": item.responses[0], "rejected": item.responses[1], "tie": True}]
    if payload["outcome"] != "preferred":
        return []
    best = payload["preferred"]
    return [
        {
            "prompt": item.prompt,
            "chosen": item.responses[best],
            "rejected": item.responses[1 - best],
            "strength": payload["strength"],
            "margin": strength_margin(payload["strength"]),
        }
    ]


def rank_records(item: Any, payload: Payload) -> list[Payload]:
    return [{"prompt": item.prompt, "responses": item.responses, "ranks": payload["ranks"]}]


def likert_records(item: Any, payload: Payload) -> list[Payload]:
    return [
        {"prompt": item.prompt, "response": item.responses[0], "score": payload["score"], "flags": payload["flags"]}
    ]


def thumbs_records(item: Any, payload: Payload) -> list[Payload]:
    return [{"prompt": item.prompt, "completion": item.responses[0], "label": payload["up"]}]


def edit_records(item: Any, payload: Payload) -> list[Payload]:
    return [{"prompt": item.prompt, "original": item.responses[0], "edited": payload["edited"]}]


def demonstration_records(item: Any, payload: Payload) -> list[Payload]:
    return [{"prompt": item.prompt, "completion": payload["completion"]}]


# --- consensus of several annotators' payloads ----------------------------------------------------------


def majority(payloads: Sequence[Payload], key: Callable[[Payload], Any]) -> Payload:
    """The payload whose key most annotators gave (first given wins a tie of counts)."""
    counts = Counter(map(key, payloads))
    top = max(counts.values())
    return next(p for p in payloads if counts[key(p)] == top)


def pair_label(payload: Payload) -> Any:
    return payload["preferred"] if payload["outcome"] == "preferred" else payload["outcome"]


def rank_consensus(payloads: Sequence[Payload]) -> Payload:
    """Ranks from Bradley-Terry strengths fitted to every pair each annotator's ranking implies (ties half)."""
    k = len(payloads[0]["ranks"])
    games = Judgements.of(
        [(i, j, (1 - sign) / 2) for payload in payloads for (i, j), sign in _rank_units(payload).items()]
    )
    theta = bradley_terry(win_matrix(games, k)).tolist()
    return {"ranks": competition_ranks([round(t, 9) for t in theta])}


def likert_consensus(payloads: Sequence[Payload]) -> Payload:
    """The (lower) median score; a flag when at least half the annotators raised it."""
    flags = Counter(f for p in payloads for f in p["flags"])
    return {
        "score": median_low(p["score"] for p in payloads),
        "flags": [f for f in INSTRUCTGPT_FLAGS if 2 * flags[f] >= len(payloads)],
    }


@dataclass(frozen=True)
class Task:
    """A task type: its page, how many replies an item holds, and what its judgments mean and export to."""

    name: str
    title: str
    responses: tuple[int, int | None]  # fewest and most replies per item (None: no limit)
    export_format: str  # the record type of rlhfkit.data.records it exports to
    from_form: Callable[[Form, Sequence[int]], Payload]
    to_records: Callable[[Any, Payload], list[Payload]]
    consensus: Callable[[Sequence[Payload]], Payload] | None  # None: free text, no consensus
    agreement_units: Callable[[Payload], dict[Any, Any]] | None  # unit -> value, for agreement statistics
    agreement_level: str = "nominal"  # Krippendorff's level of measurement for those values

    def check_item(self, responses: Sequence[Any]) -> str | None:
        """Why an item with these replies does not fit the task, or None."""
        low, high = self.responses
        if len(responses) < low or (high is not None and len(responses) > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low}-{high}"
            return f"a {self.name} item needs {wanted} responses, got {len(responses)}"
        return None


def _rank_units(payload: Payload) -> dict[Any, Any]:
    """Each pair (i, j) of replies is a unit: -1, 0 or 1 as reply i ranks above, level with or below j."""
    ranks = payload["ranks"]
    return {
        (i, j): (ranks[i] > ranks[j]) - (ranks[i] < ranks[j])
        for i in range(len(ranks))
        for j in range(i + 1, len(ranks))
    }


PAIRWISE = Task(
    "pairwise",
    "Compare two replies",
    (2, 2),
    "preference",
    pairwise_from_form,
    pairwise_records,
    lambda payloads: majority(payloads, pair_label),
    lambda payload: {0: pair_label(payload)},
)
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        PAIRWISE,
        Task(
            "rank",
            "Rank the replies",
            (2, None),
            "ranking",
            rank_from_form,
            rank_records,
            rank_consensus,
            _rank_units,
            "ordinal",
        ),
        Task(
            "likert",
            "Rate the reply",
            (1, 1),
            "rating",
            likert_from_form,
            likert_records,
            likert_consensus,
            lambda payload: {0: payload["score"]},
            "interval",
        ),
        Task(
            "thumbs",
            "Thumbs up or down",
            (1, 1),
            "unpaired",
            thumbs_from_form,
            thumbs_records,
            lambda payloads: majority(payloads, lambda p: p["up"]),
            lambda payload: {0: payload["up"]},
        ),
        Task("edit", "Edit the reply", (1, 1), "edit", text_from_form("edited"), edit_records, None, None),
        Task(
            "demonstration",
            "Write a reply",
            (0, 0),
            "sft",
            text_from_form("completion"),
            demonstration_records,
            None,
            None,
        ),
        # Each chat turn is a pairwise item: the conversation so far and two sampled replies.
        replace(PAIRWISE, name="chat", title="Chat and pick the better reply"),
    )
}
