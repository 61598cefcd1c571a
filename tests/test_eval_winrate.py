from collections.abc import Sequence
from pathlib import Path

import pytest

from rlhfkit.evaluation import winrate
from rlhfkit.evaluation.winrate import (
    LabelerSettings,
    make_labeler,
    simulated_labeler,
    wilson_interval,
    win_rate,
)
from rlhfkit.generation.sampling import SamplingSettings, sample
from rlhfkit.judging.judges import Choice
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.scores import length


def test_wilson_interval_by_hand():
    # 8 of 10 at 95%: the textbook (0.490, 0.943)
    lower, upper = wilson_interval(8, 10, 0.95)
    assert lower == pytest.approx(0.4902, abs=1e-4) and upper == pytest.approx(0.9433, abs=1e-4)
    # stays inside [0, 1] where the normal interval would not
    assert wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(5, 5)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_counts_ties_as_half_and_leaves_out_unjudged():
    result = win_rate([1, 1, 0.5, 0, None, 0.5])
    assert result.win_rate == pytest.approx(3 / 5)
    assert (result.wins, result.ties, result.losses, result.unjudged) == (2, 2, 1, 1)
    assert (result.lower, result.upper) == pytest.approx(wilson_interval(3, 5))


def test_simulated_labeler_prefers_the_higher_gold_and_ties_equal_scores():
    compare = simulated_labeler(LabelerSettings(), length)
    assert compare(["p"] * 3, ["a b c", "a", "a b"], ["a", "a b c", "c d"]) == [1.0, 0.0, 0.5]
    noisy = simulated_labeler(LabelerSettings(random_prob=1.0, seed=1), length)
    scores = noisy(["p"] * 400, ["a b c"] * 400, ["a"] * 400)
    assert 0.4 < sum(scores) / len(scores) < 0.6  # always at random


def test_win_rate_of_a_policy_against_itself_is_about_half(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer).eval()
    prompts = ["Emma was", "Mr. Darcy said", "It is a truth", "She could not", "The house was", "Her sister"] * 5
    settings = SamplingSettings(max_new_tokens=24)
    first = sample(model, tokenizer, prompts, settings, seeds=list(range(len(prompts)))).texts
    second = sample(model, tokenizer, prompts, settings, seeds=list(range(100, 100 + len(prompts)))).texts
    assert first != second
    compare = make_labeler(LabelerSettings(), length)  # the longer reply (in words) wins
    result = win_rate(compare(prompts, first, second))
    assert result.lower < 0.5 < result.upper
    assert abs(result.win_rate - 0.5) < 0.2
    # the same samples tie everywhere: exactly 0.5
    assert win_rate(compare(prompts, first, first)).win_rate == 0.5


class ScriptedJudge:
    """Always puts probability `first` on the option shown first: pure position bias."""

    name = "scripted"

    def __init__(self, first: float, unparsed_every: int = 0) -> None:
        self.first, self.unparsed_every, self.asked = first, unparsed_every, []

    def choose(self, conversations: Sequence, labels: Sequence[str]) -> list[Choice]:
        self.asked += list(conversations)
        out = []
        for i, _ in enumerate(conversations):
            if self.unparsed_every and i % self.unparsed_every == 0:
                out.append(Choice(None, "unparsed", "?", error="no answer"))
            else:
                out.append(Choice((self.first, 1 - self.first), "logprobs", "A"))
        return out


def test_ai_labeler_asks_both_orders_and_a_position_bias_cancels(monkeypatch):
    judge = ScriptedJudge(first=0.8)
    monkeypatch.setattr(winrate, "make_judge", lambda settings: judge)
    compare = make_labeler(LabelerSettings(kind="ai"), None)
    assert compare(["Say hi", "Say bye"], ["hello there", "bye"], ["hi", "farewell"]) == [0.5, 0.5]
    assert len(judge.asked) == 4
    first_order, swapped = (c[0]["content"] for c in judge.asked[:2])
    assert first_order.index("(A) hello there") < first_order.index("(B) hi")
    assert swapped.index("(A) hi") < swapped.index("(B) hello there")


def test_ai_labeler_unparsed_answers_are_unjudged(monkeypatch):
    monkeypatch.setattr(winrate, "make_judge", lambda settings: ScriptedJudge(first=0.5, unparsed_every=4))
    compare = make_labeler(LabelerSettings(kind="ai"), None)
    scores = compare(["p"] * 4, ["a"] * 4, ["b"] * 4)  # questions 0 and 4 (pairs 0 and 2) unparsed
    assert scores == [None, 0.5, None, 0.5]
    assert win_rate(scores).unjudged == 2


def test_simulated_labeler_needs_a_gold_score():
    with pytest.raises(ValueError, match="gold"):
        make_labeler(LabelerSettings(), None)


def test_a_soft_judgement_counts_as_it_is():
    result = win_rate([0.75, 0.25, 1.0])
    assert result.win_rate == pytest.approx(2 / 3)
    assert (result.lower, result.upper) == pytest.approx(wilson_interval(2, 3))
