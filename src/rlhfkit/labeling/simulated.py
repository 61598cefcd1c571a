"""`rlhfkit label simulate`: judge sampled replies with a gold score and a model of a noisy labeler.

The labeler model (P(A ≻ B) = (1 - ε)·sigma((s_A - s_B) / T) + ε/2, drawn as one set of Gumbel-noised
utilities per prompt) lives in `scores.py`, so a prompt's pairs, ranks and ratings all come from one
consistent judgement.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Literal

from pydantic import Field

from rlhfkit import assets
from rlhfkit.config import Config
from rlhfkit.data.records import CandidatesRecord, Text, load_records
from rlhfkit.scores import GoldFunction, competition_ranks, gold_function, noisy_utilities

LIKERT = 7  # InstructGPT's 1-7 scale


def likert(utility: float, population: list[float]) -> int:
    """1-7 by the reply's rank among all judged replies, spread evenly: the lowest 1, the highest 7.

    The rank is the count of strictly lower utilities, so equal utilities get equal scores.
    """
    below = sum(u < utility for u in population)
    return 1 + math.floor((LIKERT - 1) * below / max(1, len(population) - 1) + 0.5)


class LabelConfig(Config):
    """Simulated labels for sampled replies, scored by a gold function through a noisy-labeler model."""

    candidates: str = Field(
        "runs/generate/samples.jsonl", description="prompt + responses records (`rlhfkit generate` with K > 1)"
    )
    output: str = Field("runs/label/labels.jsonl", description="JSONL of preference, ranking or rating records")
    kind: Literal["preference", "ranking", "rating"] = Field(
        "ranking", description="what to write: every pair, one ranking, or a 1-7 rating per reply"
    )
    gold: str = Field("vader", description="gold score: vader, length, or python:module:function(prompt, response)")
    temperature: float = Field(0.0, ge=0, description="T in sigma((s_A - s_B)/T), in gold-score units (0: noiseless)")
    random_prob: float = Field(0.1, ge=0, le=1, description="chance of a uniformly random answer (Christiano: 0.1)")
    seed: int = Field(0, description="seed of the labeler's noise")


def _text(value: Text) -> str:
    return value if isinstance(value, str) else "\n".join(m.content for m in value)


def _json(value: Text) -> str | list[dict[str, str]]:
    return value if isinstance(value, str) else [m.model_dump() for m in value]


def label_records(
    candidates: list[CandidatesRecord], gold: GoldFunction, kind: str, temperature: float, random_prob: float, seed: int
) -> list[dict]:
    """The records (as JSON objects) a simulated labeler writes for these candidates."""
    rng = random.Random(seed)
    judged = []
    for record in candidates:
        scores = [float(gold(_text(record.prompt), _text(reply))) for reply in record.responses]
        judged.append(noisy_utilities(scores, temperature, random_prob, rng))
    population = [u for utilities in judged for u in utilities]
    rows: list[dict] = []
    for record, utilities in zip(candidates, judged, strict=True):
        prompt, replies = _json(record.prompt), [_json(r) for r in record.responses]
        if kind == "ranking":
            rows.append({"prompt": prompt, "responses": replies, "ranks": competition_ranks(utilities)})
        elif kind == "rating":
            rows += [
                {"prompt": prompt, "response": reply, "score": likert(u, population)}
                for reply, u in zip(replies, utilities, strict=True)
            ]
        else:
            for i in range(len(replies)):
                for j in range(i + 1, len(replies)):
                    better, worse = (i, j) if utilities[i] >= utilities[j] else (j, i)
                    row = {"prompt": prompt, "chosen": replies[better], "rejected": replies[worse]}
                    rows.append(row | {"tie": True} if utilities[i] == utilities[j] else row)
    return rows


def simulate(config: LabelConfig) -> Path:
    """Label every record of `config.candidates` and write them to `config.output`."""
    gold = gold_function(config.gold)
    candidates = [
        r for r in load_records(assets.resolve(config.candidates), "candidates") if isinstance(r, CandidatesRecord)
    ]
    rows = label_records(candidates, gold, config.kind, config.temperature, config.random_prob, config.seed)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return output
