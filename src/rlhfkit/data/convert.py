"""Turn every kind of comparative feedback into preference pairs, the shape reward models and DPO train on.

A ranking of K replies gives K-choose-2 pairs (InstructGPT trains on all of them from one prompt),
ratings of replies to the same prompt give pairs by score, and a labeler's edit is preferred to the reply
it corrects. Equal judgements carry no direction, so they are dropped unless ties are asked for, in which
case they come back as `tie=True` pairs for losses that use them.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from rlhfkit.data.records import (
    EditRecord,
    PreferenceRecord,
    RankingRecord,
    RatingRecord,
    Record,
    Text,
    UnpairedRecord,
)

T = TypeVar("T")
# What an exporter does with tied preference rows (`"tie": true`): TRL's trainers have no tie column and
# would train each as a win for `chosen`, so they are left out unless kept (for rlhfkit's reward training,
# which reads them as 0.5 targets) or written to a file of their own.
TiePolicy = Literal["keep", "drop", "separate"]


def apply_tie_policy(
    rows: list[dict[str, Any]], policy: TiePolicy
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows for the export, rows for the ties file): keep: all and none; drop: the strict rows and none;
    separate: the strict rows and the ties."""
    if policy == "keep":
        return rows, []
    strict = [row for row in rows if not row.get("tie")]
    return strict, [row for row in rows if row.get("tie")] if policy == "separate" else []


def ties_path(output: Path) -> Path:
    """Where `separate` writes the ties: `labels.jsonl` -> `labels.ties.jsonl` (a directory: `name.ties`)."""
    return output.with_name(f"{output.stem}.ties{output.suffix}")


class _HasPrompt(Protocol):
    @property
    def prompt(self) -> Text | None: ...


P = TypeVar("P", bound=_HasPrompt)


def ranking_to_pairs(r: RankingRecord, include_ties: bool = False) -> list[PreferenceRecord]:
    """All pairs (i < j) of a ranking's responses, in index order; the lower (better) rank is chosen."""
    return _pairs(
        r.prompt,
        [(response, -rank) for response, rank in zip(r.responses, r.ranks, strict=True)],
        include_ties,
    )


def ratings_to_pairs(
    records: Iterable[RatingRecord], include_ties: bool = False, margin_from_score: bool = False
) -> list[PreferenceRecord]:
    """Pairs of replies to the same prompt, the higher score chosen; prompts in first-seen order.

    With `margin_from_score`, a pair's margin is its score difference, so that 7 vs 1 counts for more
    than 5 vs 4 in margin losses such as Llama 2's reward-model loss.
    """
    return _grouped_pairs(((r.prompt, r.response, r.score) for r in records), include_ties, margin_from_score)


def unpaired_to_pairs(records: Iterable[UnpairedRecord]) -> list[PreferenceRecord]:
    """Each thumbs-up reply preferred to each thumbs-down reply to the same prompt (same-label pairs say nothing)."""
    return _grouped_pairs(((r.prompt, r.completion, int(r.label)) for r in records), include_ties=False)


def _grouped_pairs(
    scored: Iterable[tuple[Text, Text, float]], include_ties: bool, margin_from_score: bool = False
) -> list[PreferenceRecord]:
    """`_pairs` within each prompt's (reply, score)s, prompts in first-seen order."""
    groups: dict[Hashable, list[tuple[Text, Text, float]]] = {}
    for item in scored:
        groups.setdefault(prompt_key(item[0]), []).append(item)
    return [
        pair
        for group in groups.values()
        for pair in _pairs(group[0][0], [(reply, score) for _, reply, score in group], include_ties, margin_from_score)
    ]


def edit_to_pair(e: EditRecord) -> PreferenceRecord:
    """The edited reply preferred to the original; an edit that changes nothing says nothing, so it raises."""
    if e.edited == e.original:
        raise ValueError("edit leaves the reply unchanged")
    return PreferenceRecord(prompt=e.prompt, chosen=e.edited, rejected=e.original)


def to_preferences(records: Iterable[Record], kind: str) -> list[PreferenceRecord]:
    """Preference pairs from records of `kind` (see `_TO_PREFERENCES`), ties left out."""
    if kind not in _TO_PREFERENCES:
        raise ValueError(
            f"cannot turn {kind!r} records into preferences; convertible kinds: {', '.join(_TO_PREFERENCES)}"
        )
    return _TO_PREFERENCES[kind](records)


def _pairs(
    prompt: Text, scored: Sequence[tuple[Text, float]], include_ties: bool, margin_from_score: bool = False
) -> list[PreferenceRecord]:
    """Every pair (i < j) of scored replies to `prompt`, the higher score chosen (i's reply when tied)."""
    pairs = []
    for (first, first_score), (second, second_score) in itertools.combinations(scored, 2):
        if first_score == second_score and not include_ties:
            continue
        chosen, rejected = (first, second) if first_score >= second_score else (second, first)
        margin = float(abs(first_score - second_score)) if margin_from_score else None
        pairs.append(
            PreferenceRecord(
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                margin=margin,
                tie=first_score == second_score,
            )
        )
    return pairs


def prompt_key(prompt: Text | None) -> Hashable:
    """A hashable stand-in for a prompt, so chat prompts (lists of messages) can group records too."""
    return prompt if prompt is None or isinstance(prompt, str) else tuple((m.role, m.content) for m in prompt)


def split_by_prompt(items: Sequence[P], fraction: float, seed: int) -> tuple[list[P], list[P]]:
    """(train, held-out) items (anything with a `.prompt`): a seeded `fraction` of the prompts is held out.

    By prompt, not by row: the pairs of one ranking, or of one prompt's ratings, stay on one side, so
    held-out figures are measured on prompts never trained on.
    """
    keys = list(dict.fromkeys(prompt_key(item.prompt) for item in items))
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, round(fraction * len(keys)))] if fraction > 0 else [])
    return [i for i in items if prompt_key(i.prompt) not in held], [i for i in items if prompt_key(i.prompt) in held]


_TO_PREFERENCES: dict[str, Callable[[Iterable[Any]], list[PreferenceRecord]]] = {
    "preference": list,
    "ranking": lambda records: [pair for record in records for pair in ranking_to_pairs(record)],
    "rating": ratings_to_pairs,
    "edit": lambda records: [edit_to_pair(record) for record in records],
    "unpaired": unpaired_to_pairs,
    "scored": lambda records: [pair for record in records for pair in ranking_to_pairs(record.ranking())],
    "stepwise": lambda records: unpaired_to_pairs(record.outcome() for record in records),
}


def best_vs_worst(rankings: Path, output: Path) -> Path:
    """One preference pair per ranking: its best reply against its worst (rankings that are all ties are skipped)."""
    with output.open("w") as f:
        for line in rankings.read_text().splitlines():
            row = json.loads(line)
            best, worst = row["ranks"].index(min(row["ranks"])), row["ranks"].index(max(row["ranks"]))
            if row["ranks"][best] != row["ranks"][worst]:
                pair = {"prompt": row["prompt"], "chosen": row["responses"][best], "rejected": row["responses"][worst]}
                f.write(json.dumps(pair) + "\n")
    return output
