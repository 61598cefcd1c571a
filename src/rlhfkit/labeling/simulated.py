"""`rlhfkit label simulate`: judge sampled replies with a gold score and a model of a noisy labeler.

The labeler prefers A to B with probability

    P(A ≻ B) = (1 - ε)·sigma((s_A - s_B) / T) + ε/2

where s is the gold score of a reply, T a temperature (0: always the higher score) and ε the chance of
answering uniformly at random (Christiano et al. 2017, arXiv:1706.03741, section 2.2.3, take ε = 0.1).
One judgement per prompt is drawn as one noisy utility per reply, u = s/T + g with g ~ Gumbel(0, 1):
the difference of two Gumbel variables is logistic, so P(u_A > u_B) = sigma((s_A - s_B)/T) exactly, and
sorting by u draws a Plackett-Luce ranking with those pairwise marginals (the Gumbel-max trick). So a
prompt's pairs, ranks and ratings all come from one consistent judgement.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError
from rlhfkit.data.records import CandidatesRecord, Text, load_records

GoldFunction = Callable[[str, str], float]  # (prompt, response) -> score, higher is better
LIKERT = 7  # InstructGPT's 1-7 scale


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(prompt: str, response: str) -> float:
    """VADER's compound sentiment of the response, in [-1, 1] (Hutto & Gilbert 2014)."""
    return _vader().polarity_scores(response)["compound"]


def length(prompt: str, response: str) -> float:
    """Number of words of the response."""
    return float(len(response.split()))


GOLD: dict[str, GoldFunction] = {"vader": vader, "length": length}


def gold_function(name: str) -> GoldFunction:
    """A name from GOLD, or `python:module:function` for any function (prompt, response) -> float."""
    if name.startswith("python:"):
        module_name, _, function_name = name.removeprefix("python:").partition(":")
        try:
            return getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ConfigError(
                f"gold {name!r}: cannot load {function_name or '?'} from {module_name!r}: {error}"
            ) from None
    if name not in GOLD:
        raise ConfigError(f"unknown gold score {name!r}; expected one of: {', '.join(GOLD)}, python:module:function")
    return GOLD[name]


def preference_probability(s_a: float, s_b: float, temperature: float, random_prob: float) -> float:
    """P(A ≻ B) of the module docstring (T = 0: 1, 0.5 or 0 by the sign of s_A - s_B, before ε)."""
    gap = s_a - s_b
    step = 0.5 if gap == 0 else float(gap > 0)
    informed = step if temperature == 0 else 1 / (1 + math.exp(-gap / temperature))
    return (1 - random_prob) * informed + random_prob / 2


def noisy_utilities(scores: list[float], temperature: float, random_prob: float, rng: random.Random) -> list[float]:
    """One judgement: u_i = s_i/T + Gumbel noise, plain scores when T = 0, pure noise with probability ε."""

    def gumbel() -> float:
        return -math.log(-math.log(rng.random() or 1e-300))

    if rng.random() < random_prob:
        return [gumbel() for _ in scores]
    if temperature == 0:
        return list(scores)
    return [s / temperature + gumbel() for s in scores]


def competition_ranks(utilities: list[float]) -> list[int]:
    """1 for the highest utility, equal utilities tie ("1224" ranking): 1 + how many are strictly higher."""
    return [1 + sum(other > u for other in utilities) for u in utilities]


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
