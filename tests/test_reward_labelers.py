"""Simulated labelers: gold scores, the noise model, and the records `rlhfkit label simulate` writes."""

import json
import math
import random
import textwrap
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.config import ConfigError
from rlhfkit.data.records import CandidatesRecord, load_records
from rlhfkit.labeling.simulated import label_records, likert
from rlhfkit.scores import competition_ranks, gold_function, length, noisy_utilities, preference_probability, vader


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_preference_probability_formula():
    assert preference_probability(2.0, 1.0, 0.5, 0.0) == pytest.approx(sigmoid(2.0))
    assert preference_probability(2.0, 1.0, 0.5, 0.1) == pytest.approx(0.9 * sigmoid(2.0) + 0.05)
    assert preference_probability(1.0, 3.0, 0.0, 0.1) == pytest.approx(0.05)  # T = 0: the better one, bar ε
    assert preference_probability(1.0, 1.0, 0.0, 0.0) == 0.5


@pytest.mark.parametrize(("temperature", "random_prob"), [(0.5, 0.0), (1.0, 0.1), (0.0, 0.2)])
def test_noisy_choices_follow_the_preference_probability(temperature: float, random_prob: float):
    rng = random.Random(0)
    draws = 20_000
    wins = 0
    for _ in range(draws):
        u = noisy_utilities([1.0, 0.5], temperature, random_prob, rng)
        wins += u[0] > u[1]
    p = preference_probability(1.0, 0.5, temperature, random_prob)
    assert abs(wins / draws - p) < 4 * math.sqrt(p * (1 - p) / draws) + 1e-9


def test_ranks_are_competition_ranks():
    assert competition_ranks([0.3, 0.9, 0.3, -1.0]) == [2, 1, 2, 4]


def test_likert_uses_the_whole_scale_by_quantile():
    population = [float(i) for i in range(14)]
    assert [likert(u, population) for u in population] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]


def test_gold_functions():
    assert vader("", "What a lovely, happy day!") > 0.5 > vader("", "a plain day") > -0.5 > vader("", "Awful, sad.")
    assert length("ignored", "three words here") == 3.0
    assert gold_function("vader") is vader


def test_python_gold_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "my_gold.py").write_text("def shouting(prompt, response):\n    return response.count('!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gold_function("python:my_gold:shouting")("p", "hey!!") == 2
    with pytest.raises(ConfigError, match="cannot load missing from 'my_gold'"):
        gold_function("python:my_gold:missing")
    with pytest.raises(ConfigError, match="expected one of: vader, length, python:module:function"):
        gold_function("sentiment")


def candidates(*replies: list[str]) -> list[CandidatesRecord]:
    return [CandidatesRecord(prompt=f"p{i}", responses=r) for i, r in enumerate(replies)]


def test_noiseless_labels_of_every_kind():
    data = candidates(["a b c", "a", "a b", "x y"], ["one two", "one"])
    ranking = label_records(data, length, "ranking", temperature=0.0, random_prob=0.0, seed=0)
    assert ranking == [
        {"prompt": "p0", "responses": ["a b c", "a", "a b", "x y"], "ranks": [1, 4, 2, 2]},
        {"prompt": "p1", "responses": ["one two", "one"], "ranks": [1, 2]},
    ]
    pairs = label_records(data, length, "preference", temperature=0.0, random_prob=0.0, seed=0)
    assert len(pairs) == 6 + 1  # all C(4,2) + C(2,2) pairs
    assert {"prompt": "p0", "chosen": "a b", "rejected": "x y", "tie": True} in pairs
    assert all(len(p["chosen"].split()) >= len(p["rejected"].split()) for p in pairs)
    ratings = label_records(data, length, "rating", temperature=0.0, random_prob=0.0, seed=0)
    scores = {(r["prompt"], r["response"]): r["score"] for r in ratings}
    assert scores[("p0", "a b c")] == 7 and scores[("p0", "a")] == 1 and scores[("p0", "a b")] == scores[("p0", "x y")]


def test_label_simulate_reads_generate_output_and_writes_loadable_records(tmp_path: Path, capsys):
    rng = random.Random(0)
    words = ["lovely", "happy", "sad", "awful", "the", "walk", "garden", "letter"]
    rows = [{"prompt": f"p{i}", "responses": [" ".join(rng.sample(words, 3)) for _ in range(4)]} for i in range(30)]
    source = tmp_path / "samples.jsonl"  # what `rlhfkit generate` writes with num_samples=4
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for kind in ("preference", "ranking", "rating"):
        out = tmp_path / f"{kind}.jsonl"
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "label",
                    "simulate",
                    "--set",
                    f"candidates={source}",
                    "--set",
                    f"output={out}",
                    "--set",
                    f"kind={kind}",
                    "--set",
                    "temperature=0.1",
                ]
            )
        assert exit_info.value.code in (0, None)
        records = load_records(out, kind)
        assert len(records) == {"preference": 30 * 6, "ranking": 30, "rating": 30 * 4}[kind]
    assert str(tmp_path / "rating.jsonl") in capsys.readouterr().out


def test_a_single_candidate_is_an_error_naming_the_row(tmp_path: Path, capsys):
    source = tmp_path / "samples.jsonl"
    source.write_text(
        textwrap.dedent("""\
        {"prompt": "p", "responses": ["a", "b"]}
        {"prompt": "q", "responses": ["only one"]}
    """)
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "simulate", "--set", f"candidates={source}", "--set", f"output={tmp_path / 'o.jsonl'}"])
    assert exit_info.value.code == 2
    assert f"{source}:2: field 'responses': List should have at least 2 items" in capsys.readouterr().err
