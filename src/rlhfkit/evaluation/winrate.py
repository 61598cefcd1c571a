"""Win-rate of one policy's replies against another's, judged reply by reply, with a confidence interval.

A judgement scores the first reply against the second: 1 (better), 0.5 (tie), 0 (worse), or None (the
labeler gave no answer, e.g. an AI judge's unparsed reply: left out, and counted). The win-rate is the
mean score, ties counting half:

    ŵ = (wins + ties/2) / n.

Its interval is Wilson's score interval (Wilson 1927, JASA 22(158)), which unlike the normal (Wald)
interval stays inside [0, 1] and keeps its coverage near 0 and 1:

    (ŵ + z²/2n ± z·sqrt(ŵ(1 - ŵ)/n + z²/4n²)) / (1 + z²/n),    z = Φ⁻¹(1 - α/2).

A tie scores exactly 0.5 and so varies less than a coin flip: with ties the interval is conservative.

Labelers are functions (prompts, first replies, second replies) -> scores, made by one `LABELERS` table:
`simulated` (a gold score through the noisy-labeler model of `labeling.simulated`) and `ai` (a `Judge` asked
Constitutional AI's multiple-choice question in both orders, as `rlhfkit label ai` does). Human labels can
be read the same way once collected.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal

from pydantic import Field

from rlhfkit.config import Config, ConfigError
from rlhfkit.data.records import Text
from rlhfkit.judging.constitution import load_constitution, principle_schedule
from rlhfkit.judging.judges import JudgeSettings, make_judge
from rlhfkit.judging.questions import average_over_orders, comparison_question, rotations, text_of
from rlhfkit.scores import GoldFunction, noisy_utilities

Compare = Callable[[Sequence[Text], Sequence[str], Sequence[str]], list[float | None]]


def wilson_interval(points: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion `points`/n (module docstring); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = points / n
    centre = p + z * z / (2 * n)
    spread = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    scale = 1 + z * z / n
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)  # clamp: rounding only


@dataclass(frozen=True)
class WinRate:
    """The win-rate of the first policy against the second and its Wilson interval."""

    win_rate: float
    lower: float
    upper: float
    wins: int
    ties: int
    losses: int
    unjudged: int  # judgements the labeler could not make (left out)
    confidence: float

    def to_json(self) -> dict:
        return asdict(self)


def win_rate(scores: Sequence[float | None], confidence: float = 0.95) -> WinRate:
    """ŵ and its interval from per-prompt scores (1, 0.5, 0; a soft score in between counts as it is)."""
    judged = [s for s in scores if s is not None]
    points = sum(judged)
    lower, upper = wilson_interval(points, len(judged), confidence)
    return WinRate(
        win_rate=points / len(judged) if judged else 0.5,
        lower=lower,
        upper=upper,
        wins=sum(s > 0.5 for s in judged),
        ties=sum(s == 0.5 for s in judged),
        losses=sum(s < 0.5 for s in judged),
        unjudged=len(scores) - len(judged),
        confidence=confidence,
    )


# ---------------------------------------------------------------------------------------------------------
# Labelers.


class LabelerSettings(Config):
    """Who judges pairs of replies: a simulated labeler (a gold score) or an AI judge."""

    kind: Literal["simulated", "ai"] = Field("simulated", description="simulated (the gold score) or ai (a judge)")
    temperature: float = Field(0.0, ge=0, description="simulated: T in sigma((s_A - s_B)/T) (0: the higher gold wins)")
    random_prob: float = Field(0.0, ge=0, le=1, description="simulated: chance of a uniformly random answer")
    seed: int = Field(0, description="seed of the simulated labeler's noise and of the AI judge's principles")
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="ai: the judge")
    constitution: str = Field("constitution", description="ai: YAML file of principles")
    principles: list[str] | None = Field(None, description="ai: names of the principles to use (default: all)")
    tie_threshold: float = Field(0.0, ge=0, le=0.5, description="ai: |P(first ≻ second) - 0.5| <= this is a tie")


def simulated_labeler(settings: LabelerSettings, gold: GoldFunction | None) -> Compare:
    """First ≻ second when its noisy utility is higher (`scores.noisy_utilities`); equal: a tie."""
    if gold is None:
        raise ConfigError("labeler.kind=simulated needs a gold score: set gold (e.g. vader)")
    rng = random.Random(settings.seed)

    def compare(prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> list[float | None]:
        scores: list[float | None] = []
        for prompt, a, b in zip(prompts, first, second, strict=True):
            u_a, u_b = noisy_utilities(
                [gold(text_of(prompt), a), gold(text_of(prompt), b)], settings.temperature, settings.random_prob, rng
            )
            scores.append(0.5 if u_a == u_b else float(u_a > u_b))
        return scores

    return compare


def ai_labeler(settings: LabelerSettings, gold: GoldFunction | None) -> Compare:
    """A judge asked which reply is better under a principle, both orders averaged (Lee et al. 2023,
    arXiv:2309.00267, section 2.1.1); P(first ≻ second) within `tie_threshold` of 0.5 is a tie."""
    judge = make_judge(settings.judge)
    principles = load_constitution(settings.constitution).select(settings.principles)
    orders = rotations(2)  # [[0, 1], [1, 0]]: each reply shown first once

    def compare(prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> list[float | None]:
        chosen = principle_schedule(principles, len(prompts), "sample", settings.seed)
        questions = [
            comparison_question(prompt, [(a, b)[i] for i in order], principle)
            for prompt, a, b, principle in zip(prompts, first, second, chosen, strict=True)
            for order in orders
        ]
        choices = judge.choose(questions, "AB")
        scores: list[float | None] = []
        for k in range(len(prompts)):
            probabilities = [c.probabilities for c in choices[2 * k : 2 * k + 2]]
            if any(p is None for p in probabilities):
                scores.append(None)
                continue
            p_first = average_over_orders(orders, probabilities)[0]  # type: ignore[arg-type]
            scores.append(0.5 if abs(p_first - 0.5) <= settings.tie_threshold else float(p_first > 0.5))
        return scores

    return compare


LABELERS: dict[str, Callable[[LabelerSettings, GoldFunction | None], Compare]] = {
    "simulated": simulated_labeler,
    "ai": ai_labeler,
}


def make_labeler(settings: LabelerSettings, gold: GoldFunction | None) -> Compare:
    """The labeler `settings.kind` names."""
    return LABELERS[settings.kind](settings, gold)
