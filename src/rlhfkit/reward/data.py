"""Reward-model training data: every kind of judgement as comparisons of replies to one prompt.

A comparison is one batch element: K replies to a prompt, their ranks (1 best, equal ranks tied), a
margin, and the head it trains. A preference pair is a ranking of two; a K-way ranking stays whole, so
each reply is forwarded once (InstructGPT, arXiv:2203.02155, section 3.5), as does a scored (UltraFeedback)
record's ranking; ratings become pairs by score, and every other kind pairs through the data layer's
conversions (thumbs up vs down on one prompt, an edit over its original).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

from rlhfkit import assets
from rlhfkit.data.convert import ratings_to_pairs, to_preferences
from rlhfkit.data.records import PreferenceRecord, RankingRecord, RatingRecord, ScoredRecord, Text, load_feedback

Kind = Literal["preference", "ranking", "rating", "scored", "edit", "unpaired", "stepwise"]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass(frozen=True)
class Comparison:
    """K >= 2 replies to `prompt`, ranked by a labeler (1 is best, equal ranks are ties)."""

    prompt: Text
    responses: Sequence[Text]
    ranks: Sequence[int]
    margin: float = 0.0  # how much the preferred reply must win by (pairs only; 0: plain Bradley-Terry)
    head: int = 0  # index of the reward head these labels train

    def pairs(self) -> list[tuple[int, int, bool]]:
        """(better, worse, tie) index pairs, each unordered pair once, as the loss counts them."""
        out = []
        for i in range(len(self.responses)):
            for j in range(i + 1, len(self.responses)):
                if self.ranks[i] == self.ranks[j]:
                    out.append((i, j, True))
                else:
                    out.append((i, j, False) if self.ranks[i] < self.ranks[j] else (j, i, False))
        return out

    def informative_pairs(self) -> int:
        """Pairs that say which reply is better: neither tied nor a reply compared with itself."""
        return sum(not tie and self.responses[i] != self.responses[j] for i, j, tie in self.pairs())


def from_pair(pair: PreferenceRecord, head: int, use_margin: bool) -> Comparison:
    margin = pair.margin if use_margin and pair.margin is not None and not pair.tie else 0.0
    return Comparison(pair.prompt, [pair.chosen, pair.rejected], [1, 1 if pair.tie else 2], margin, head)


def load_comparisons(path: str, kind: str | None, head: int = 0, use_margin: bool = False) -> list[Comparison]:
    """Comparisons from a file of any kind of KINDS (ties kept, as 0.5 targets); None: the kind its fields show.

    Ratings of replies to the same prompt become pairs by score (equal scores: ties); with `use_margin`,
    a pair's margin is its score gap, or a preference record's `margin` field.
    """
    kind, records = load_feedback(assets.resolve(path), kind, KINDS)
    if kind in ("ranking", "scored"):
        rankings = [r.ranking() if isinstance(r, ScoredRecord) else cast(RankingRecord, r) for r in records]
        return [Comparison(r.prompt, r.responses, r.ranks, 0.0, head) for r in rankings]
    if kind == "rating":
        ratings = [r for r in records if isinstance(r, RatingRecord)]
        pairs = ratings_to_pairs(ratings, include_ties=True, margin_from_score=use_margin)
    else:
        pairs = to_preferences(records, kind)
    return [from_pair(pair, head, use_margin) for pair in pairs]


def bootstrap(comparisons: list[Comparison], seed: int) -> list[Comparison]:
    """A resample of the same size, drawn with replacement: one ensemble member's training set."""
    rng = random.Random(seed)
    return [comparisons[rng.randrange(len(comparisons))] for _ in comparisons]
