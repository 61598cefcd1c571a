"""`rlhfkit label ai`: preference labels from an AI judge that follows a constitution (RLAIF).

For each prompt's K sampled replies, a judge is asked, under one principle of the constitution, which
reply is best, in the multiple-choice format of Constitutional AI (Bai et al. 2022, arXiv:2212.08073,
section 4.1). Pairwise judgement asks about every pair and writes preference records; K-way judgement
shows all K replies at once and writes one ranking record.

LLM judges favour a position (often the first option), so every question is asked in every order: a pair
both ways, K replies in K cyclic rotations (each reply once in each position), and the probabilities are
averaged (Lee et al. 2023, arXiv:2309.00267, section 2.1.1). If any order's answer is unparsed, the
whole judgement goes to the unparsed file: a label is never made from part of the evidence.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.console import Console

from rlhfkit import assets
from rlhfkit.config import Config
from rlhfkit.data.convert import TiePolicy, apply_tie_policy, ties_path
from rlhfkit.data.records import CandidatesRecord, Text, load_records
from rlhfkit.judging.constitution import Order, Principle, load_constitution, principle_schedule
from rlhfkit.judging.judges import Choice, Conversation, Judge, JudgeSettings, make_judge
from rlhfkit.judging.questions import (
    LETTERS,
    average_over_orders,
    comparison_question,
    rotations,
    same_position,
    text_of,
)
from rlhfkit.scores import competition_ranks

console = Console(stderr=True)


class AILabelConfig(Config):
    """AI preference labels for sampled replies: a judge guided by a constitution (RLAIF, Constitutional AI)."""

    candidates: str = Field(
        "runs/generate/samples.jsonl", description="prompt + responses records (`rlhfkit generate` with K > 1)"
    )
    output: str = Field("runs/label-ai/labels.jsonl", description="JSONL of preference or ranking records")
    unparsed: str | None = Field(
        None, description="JSONL of unreadable judgements (default: OUTPUT's name + .unparsed.jsonl)"
    )
    judgement: Literal["pairwise", "kway"] = Field(
        "pairwise", description="pairwise: every pair, preference records; kway: all K at once, ranking records"
    )
    both_orders: bool = Field(
        True, description="ask in every order (pairs both ways, K rotations) and average: no position bias"
    )
    tie_threshold: float = Field(0.0, ge=0, le=0.5, description="pairwise: |P(A ≻ B) - 0.5| <= this is a tie")
    ties: TiePolicy = Field(
        "drop",
        description="tied pairs: drop (TRL would train them as wins), keep (rlhfkit reward reads them as 0.5), "
        "or separate (to OUTPUT's name + .ties.jsonl)",
    )
    drop_same_position: bool = Field(
        False, description="leave out judgements that preferred the same position in every order (to the unparsed file)"
    )
    constitution: str = Field("constitution", description="YAML file of principles ('constitution': the default)")
    principles: list[str] | None = Field(None, description="names of the principles to use (default: all)")
    principle_order: Order = Field(
        "sample", description="sample: a random principle per judgement (CAI); cycle: in turn"
    )
    limit: int | None = Field(None, ge=1, description="judge only the first N candidate records")
    seed: int = Field(0, description="seed of the principle draws")
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="the judge")


@dataclass(frozen=True)
class Item:
    """One judgement: some replies of one candidates record, under one principle, asked in `orders`."""

    record: int
    replies: tuple[int, ...]
    principle: Principle
    orders: list[list[int]]


def plan(candidates: Sequence[CandidatesRecord], config: AILabelConfig, principles: list[Principle]) -> list[Item]:
    """Every judgement to make: each pair (pairwise) or each record (kway), with its principle and orders."""
    groups: list[tuple[int, tuple[int, ...]]] = []
    for index, record in enumerate(candidates):
        k = len(record.responses)
        subsets = itertools.combinations(range(k), 2) if config.judgement == "pairwise" else [tuple(range(k))]
        groups += [(index, tuple(subset)) for subset in subsets]
    chosen = principle_schedule(principles, len(groups), config.principle_order, config.seed)
    items = []
    for (index, replies), principle in zip(groups, chosen, strict=True):
        orders = rotations(len(replies)) if config.both_orders else [list(range(len(replies)))]
        items.append(Item(index, replies, principle, orders))
    return items


def _plain(value: Text) -> Any:
    return value if isinstance(value, str) else [m.model_dump() for m in value]


def label_row(
    record: CandidatesRecord, item: Item, choices: Sequence[Choice], source: dict[str, Any], tie: float
) -> dict:
    """The preference (pairwise) or ranking (kway) record for one fully parsed judgement.

    Its `source` names the judge and principle and keeps the evidence: a pair's probability P(chosen ≻
    rejected) and the probability the judge gave the chosen reply when it was shown first and second
    (their mean is the probability); a ranking's P(best) per reply, each order (`orders[o][j]`: the reply
    at position j) and the judge's probabilities for the positions of each order.
    """
    position_probs = [c.probabilities for c in choices if c.probabilities is not None]
    best = average_over_orders(item.orders, position_probs)
    replies = [_plain(record.responses[i]) for i in item.replies]
    source = source | {"principle": item.principle.name, "methods": [c.method for c in choices]}
    prompt = _plain(record.prompt)
    if source["judgement"] == "pairwise":
        c = 0 if best[0] >= best[1] else 1
        row = {"prompt": prompt, "chosen": replies[c], "rejected": replies[1 - c]}
        if abs(best[0] - 0.5) <= tie:
            row["tie"] = True
        shown = {
            ("first", "second")[order.index(c)]: p[order.index(c)]
            for order, p in zip(item.orders, position_probs, strict=True)
        }
        return row | {"source": source | {"probability": best[c], "chosen_shown": shown}}
    evidence = {"probabilities": best, "orders": item.orders, "order_probabilities": [list(p) for p in position_probs]}
    return {"prompt": prompt, "responses": replies, "ranks": competition_ranks(best), "source": source | evidence}


def unparsed_row(
    record: CandidatesRecord, item: Item, choices: Sequence[Choice], source: dict[str, Any], reason: str
) -> dict:
    """What the judge said for a judgement that is not a label (`reason`), kept for inspection."""
    return {
        "prompt": _plain(record.prompt),
        "responses": [_plain(record.responses[i]) for i in item.replies],
        "source": source | {"principle": item.principle.name},
        "reason": reason,
        "orders": item.orders,
        "answers": [c.answer for c in choices],
        "methods": [c.method for c in choices],
        "errors": [c.error for c in choices],
        "probabilities": [None if c.probabilities is None else list(c.probabilities) for c in choices],
    }


def judge_items(judge: Judge, candidates: Sequence[CandidatesRecord], items: Sequence[Item]) -> list[list[Choice]]:
    """Ask every question of every item (each order once), in one call per number of options."""
    questions: list[tuple[int, int, Conversation]] = []
    for n, item in enumerate(items):
        record = candidates[item.record]
        for o, order in enumerate(item.orders):
            shown = [text_of(record.responses[item.replies[j]]) for j in order]
            questions.append((n, o, comparison_question(record.prompt, shown, item.principle)))
    answers: list[list[Choice | None]] = [[None] * len(item.orders) for item in items]
    for k in sorted({len(item.replies) for item in items}):
        asked = [q for q in questions if len(items[q[0]].replies) == k]
        for (n, o, _), choice in zip(asked, judge.choose([q[2] for q in asked], LETTERS[:k]), strict=True):
            answers[n][o] = choice
    return [[c for c in row if c is not None] for row in answers]


def label_ai(config: AILabelConfig) -> Path:
    """Judge every candidate record, write labels to `config.output` and unparsed judgements beside them."""
    principles = load_constitution(config.constitution).select(config.principles)
    candidates = [
        r for r in load_records(assets.resolve(config.candidates), "candidates") if isinstance(r, CandidatesRecord)
    ][: config.limit]
    items = plan(candidates, config, principles)
    judge = make_judge(config.judge)
    console.print(
        f"{len(items)} {config.judgement} judgements of {len(candidates)} prompts, "
        f"{sum(len(i.orders) for i in items)} questions, principles: {', '.join(p.name for p in principles)}"
    )
    answers = judge_items(judge, candidates, items)
    source = {"labeler": "ai", "judge": judge.name, "backend": config.judge.backend, "judgement": config.judgement}
    labels, unparsed = [], []
    for item, choices in zip(items, answers, strict=True):
        record = candidates[item.record]
        position_probs = [c.probabilities for c in choices if c.probabilities is not None]
        if len(position_probs) < len(choices):
            unparsed.append(unparsed_row(record, item, choices, source, "unparsed answer"))
        elif config.drop_same_position and same_position(position_probs):
            unparsed.append(unparsed_row(record, item, choices, source, "same position preferred in every order"))
        else:
            labels.append(label_row(record, item, choices, source, config.tie_threshold))
    output = Path(config.output)
    unparsed_path = Path(config.unparsed) if config.unparsed else output.with_name(output.stem + ".unparsed.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    unparsed_path.parent.mkdir(parents=True, exist_ok=True)
    strict, tied = apply_tie_policy(labels, config.ties)
    if len(strict) < len(labels):
        where = f"written to {ties_path(output)}" if config.ties == "separate" else "left out (ties=keep|separate)"
        console.print(f"{len(labels) - len(strict)} tied pairs {where}: TRL's trainers would read them as wins")
    labels = strict
    output.write_text("".join(json.dumps(row) + "\n" for row in labels))
    unparsed_path.write_text("".join(json.dumps(row) + "\n" for row in unparsed))
    if config.ties == "separate":
        ties_path(output).write_text("".join(json.dumps(row) + "\n" for row in tied))
    report(items, answers, labels, unparsed_path, len(unparsed))
    return output


def position_bias(items: Sequence[Item], answers: Sequence[Sequence[Choice]]) -> float | None:
    """Mean of (K·P(first position) - 1)/(K - 1) over parsed answers: 0 for no preference for the first
    option, 1 when the judge always picks it, negative when it favours later ones."""
    values = [
        (len(item.replies) * c.probabilities[0] - 1) / (len(item.replies) - 1)
        for item, choices in zip(items, answers, strict=True)
        for c in choices
        if c.probabilities is not None
    ]
    return sum(values) / len(values) if values else None


def report(
    items: Sequence[Item], answers: Sequence[Sequence[Choice]], labels: list[dict], unparsed: Path, n_unparsed: int
) -> None:
    """Counts per principle and method, the judge's position bias, and where the unparsed answers went."""
    methods = Counter(c.method for choices in answers for c in choices)
    principles = Counter(row["source"]["principle"] for row in labels)
    bias = position_bias(items, answers)
    asked = [[c.probabilities for c in choices] for choices in answers if len(choices) > 1]
    parsed = [probs for probs in asked if all(p is not None for p in probs)]
    same = sum(same_position(probs) for probs in parsed)  # type: ignore[arg-type]
    console.print(
        f"{len(labels)} labels ({', '.join(f'{n} {p}' for p, n in principles.items()) or 'none'}); "
        f"answers: {', '.join(f'{n} {m}' for m, n in methods.items())}; "
        f"first-position bias {'n/a' if bias is None else f'{bias:+.2f}'} (0: none)"
    )
    if parsed:
        console.print(
            f"position bias: the same position was preferred in every order in {same} of {len(parsed)} judgements "
            f"({same / len(parsed):.0%}): weak labels once averaged (drop_same_position=true leaves them out)"
        )
    if n_unparsed:
        console.print(f"[yellow]{n_unparsed} of {len(items)} judgements are not labels (each row says why): {unparsed}")
