"""`rlhfkit label agreement`: how often an AI labeler agrees with human (or simulated) labels.

Both label files become pairwise judgements: (prompt, unordered pair of replies) -> the preferred reply,
or a tie. On the pairs both files judged, agreement is the share of strict judgements where both prefer
the same reply; Lee et al. (2023, arXiv:2309.00267) call it "AI labeler alignment", and
Bai et al. (2022, arXiv:2212.08073, section 2) score their feedback models against human comparisons the
same way. Ties on either side carry no direction and are counted apart. Where AI labels carry their
probability, the soft agreement is the mean probability the AI gave to the reply the reference preferred.
The report is broken down by the principle each AI label was made under.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field
from rich.console import Console
from rich.table import Table

from rlhfkit import assets
from rlhfkit.config import Config
from rlhfkit.data.readers import read_rows
from rlhfkit.data.records import PreferenceRecord, RankingRecord, RatingRecord, Text, validate_record

console = Console()

Kind = Literal["preference", "ranking", "rating"]


@dataclass(frozen=True)
class Judged:
    """One pairwise judgement: `winner` is the preferred reply's key (None: a tie)."""

    prompt: str
    pair: frozenset[str]
    winner: str | None
    principle: str | None = None
    probability: float | None = None  # P(winner ≻ other) where the labeler said (AI preference labels)


def _key(value: Text) -> str:
    return json.dumps(value if isinstance(value, str) else [m.model_dump() for m in value], sort_keys=True)


def _pairs_of(prompt: str, scored: Sequence[tuple[str, float]], principle: str | None) -> list[Judged]:
    """Every pair of replies by score (higher preferred), equal scores tied."""
    out = []
    for i in range(len(scored)):
        for j in range(i + 1, len(scored)):
            (a, sa), (b, sb) = scored[i], scored[j]
            if a != b:
                out.append(Judged(prompt, frozenset((a, b)), None if sa == sb else a if sa > sb else b, principle))
    return out


def read_judgements(path: str, kind: Kind) -> list[Judged]:
    """Pairwise judgements from a file of preference, ranking or rating records (ratings paired by prompt)."""
    judged: list[Judged] = []
    ratings: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for row in read_rows(assets.resolve(path)):
        record = validate_record(row.data, kind, row.location)
        source: dict[str, Any] = row.data["source"] if isinstance(row.data.get("source"), dict) else {}
        principle = source.get("principle")
        prompt = _key(cast(Text, record.prompt))  # preference, ranking and rating records have one
        if isinstance(record, PreferenceRecord):
            chosen, rejected = _key(record.chosen), _key(record.rejected)
            winner = None if record.tie else chosen
            judged.append(Judged(prompt, frozenset((chosen, rejected)), winner, principle, source.get("probability")))
        elif isinstance(record, RankingRecord):
            scored = [(_key(r), -float(rank)) for r, rank in zip(record.responses, record.ranks, strict=True)]
            judged += _pairs_of(prompt, scored, principle)
        elif isinstance(record, RatingRecord):
            ratings[prompt].append((_key(record.response), float(record.score)))
    for prompt, scored in ratings.items():
        judged += _pairs_of(prompt, scored, None)
    return judged


def agreement_stats(ai: Iterable[Judged], reference: Iterable[Judged]) -> dict[str, float | None]:
    """Agreement of `ai` with `reference` on the pairs both judged (every AI x reference judgement of a pair).

    agreement = matches / strict pairs, with its binomial standard error sqrt(a(1 - a)/n); soft_agreement
    = mean P_AI(reference winner) over strict pairs whose AI label has a probability; ties: pairs that
    either side tied (left out of agreement). Rates without data are None.
    """
    by_pair: dict[tuple[str, frozenset[str]], list[Judged]] = defaultdict(list)
    for judgement in reference:
        by_pair[(judgement.prompt, judgement.pair)].append(judgement)
    strict = matches = ties = 0
    soft: list[float] = []
    for mine in ai:
        for theirs in by_pair.get((mine.prompt, mine.pair), []):
            if mine.winner is None or theirs.winner is None:
                ties += 1
                continue
            strict += 1
            matches += mine.winner == theirs.winner
            if mine.probability is not None:
                soft.append(mine.probability if mine.winner == theirs.winner else 1 - mine.probability)
    rate = matches / strict if strict else None
    return {
        "pairs": strict,
        "agreement": rate,
        "stderr": None if rate is None else math.sqrt(rate * (1 - rate) / strict),
        "soft_agreement": sum(soft) / len(soft) if soft else None,
        "ties": ties,
    }


def agreement_report(ai: list[Judged], reference: list[Judged]) -> dict:
    """Overall and per-principle agreement, and how many judgements of each file found no partner."""
    reference_pairs = {(j.prompt, j.pair) for j in reference}
    ai_pairs = {(j.prompt, j.pair) for j in ai}
    by_principle: dict[str, list[Judged]] = defaultdict(list)
    for judgement in ai:
        by_principle[judgement.principle or "(none)"].append(judgement)
    return {
        "overall": agreement_stats(ai, reference),
        "by_principle": {name: agreement_stats(group, reference) for name, group in sorted(by_principle.items())},
        "ai_judgements": len(ai),
        "reference_judgements": len(reference),
        "ai_unmatched": sum((j.prompt, j.pair) not in reference_pairs for j in ai),
        "reference_unmatched": sum((j.prompt, j.pair) not in ai_pairs for j in reference),
    }


class AgreementConfig(Config):
    """Agreement of AI labels with human or simulated labels of the same replies, overall and per principle."""

    ai: str = Field("runs/label-ai/labels.jsonl", description="the AI labels (`rlhfkit label ai` output)")
    ai_kind: Kind = Field("preference", description="record kind of `ai`")
    reference: str = Field("runs/label/labels.jsonl", description="human or simulated labels of the same replies")
    reference_kind: Kind = Field("ranking", description="record kind of `reference`")
    output: str | None = Field(None, description="JSON report (default: agreement.json beside the AI labels)")


def agreement(config: AgreementConfig) -> Path:
    """Compare the two label files, print a table and write the JSON report."""
    report = agreement_report(
        read_judgements(config.ai, config.ai_kind), read_judgements(config.reference, config.reference_kind)
    )
    output = Path(config.output) if config.output else Path(config.ai).with_name("agreement.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    table = Table(title=f"AI labels {config.ai} vs {config.reference}")
    for column in ("principle", "pairs", "agreement", "± s.e.", "soft", "ties"):
        table.add_column(column, justify="left" if column == "principle" else "right")
    rows = [("all", report["overall"]), *report["by_principle"].items()]
    for name, stats in rows:
        rates = [stats[k] for k in ("agreement", "stderr", "soft_agreement")]
        shown = ["n/a" if r is None else f"{r:.3f}" for r in rates]
        table.add_row(name, str(stats["pairs"]), *shown, str(stats["ties"]))
    console.print(table)
    console.print(
        f"{report['ai_unmatched']} of {report['ai_judgements']} AI judgements and {report['reference_unmatched']} "
        f"of {report['reference_judgements']} reference judgements have no partner in the other file"
    )
    return output
