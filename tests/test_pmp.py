"""Preference-model pretraining: comparisons built from a corpus or scored replies, and `rlhfkit reward`
starting from the PMP model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.data.readers import DataError
from rlhfkit.data.records import load_records
from rlhfkit.reward.pmp import CORRUPTIONS, PMPBuildConfig, build
from rlhfkit.reward.train import HeadData, PMPPhase, RewardConfig, reward

GOOD = ["happy", "glad", "joy", "kind", "warm", "bright", "lovely", "good"]
BAD = ["sad", "grim", "cold", "dull", "bleak", "awful", "bad", "cruel"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_corpus_comparisons_prefer_the_true_continuation_to_each_corruption(tmp_path: Path):
    out = build(PMPBuildConfig(output=str(tmp_path / "pmp.jsonl"), comparisons=80, min_comparisons=80, seed=3))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 80 and {r["corruption"] for r in rows} == set(CORRUPTIONS)
    assert len(load_records(str(out), "preference")) == 80  # valid preference records
    for row in rows:
        chosen, rejected = row["chosen"].split(), row["rejected"].split()
        assert chosen != rejected and row["chosen"].startswith(" ")
        if row["corruption"] == "shuffle":
            assert sorted(chosen) == sorted(rejected)
        elif row["corruption"] == "truncate":
            assert chosen[: len(rejected)] == rejected and len(rejected) <= max(1, len(chosen) // 2)
        elif row["corruption"] == "repeat":
            assert len(rejected) == len(chosen) and len(set(rejected)) < len(set(chosen)) + 1
        else:
            assert len(rejected) == len(chosen)


def test_scored_replies_become_pairs_by_score(tmp_path: Path):
    rows = [
        {"q": "A?", "answer": " one", "votes": 5},
        {"q": "A?", "answer": " two", "votes": 9},
        {"q": "A?", "answer": " three", "votes": 5},
        {"q": "B?", "answer": " alone", "votes": 1},
    ]
    source = write_jsonl(tmp_path / "scored.jsonl", rows)
    settings = {"prompt_field": "q", "response_field": "answer", "score_field": "votes", "min_comparisons": 2}
    out = build(PMPBuildConfig(source=source, output=str(tmp_path / "pairs.jsonl"), **settings))
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert pairs == [
        {"prompt": "A?", "chosen": " two", "rejected": " one", "margin": 4.0},
        {"prompt": "A?", "chosen": " two", "rejected": " three", "margin": 4.0},
    ]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": "A?", "response": " x", "score": 1}, {"prompt": "A?", "response": " y"}],
            r"scored.jsonl:2: field 'score': missing",
        ),
        ([{"prompt": "A?", "response": " x", "score": "high"}], r"scored.jsonl:1: field 'score': a finite number"),
        (
            [{"prompt": "A?", "response": " x", "score": 1}, {"prompt": "B?", "response": " y", "score": 2}],
            r"scored.jsonl: 0 comparisons, fewer than min_comparisons=1: .*field 'prompt' and different field "
            r"'score'; 2 of 2 prompts have no such pair \(first: .*scored.jsonl:1\)",
        ),
    ],
)
def test_bad_scored_sources_name_file_row_and_field_and_write_nothing(tmp_path: Path, rows: list, message: str):
    source = write_jsonl(tmp_path / "scored.jsonl", rows)
    output = tmp_path / "out" / "pairs.jsonl"
    with pytest.raises(DataError, match=message):
        build(PMPBuildConfig(source=source, output=str(output), min_comparisons=1))
    assert not output.parent.exists()


def test_too_short_a_corpus_is_refused(tmp_path: Path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("Too short.\n\nAlso short.\n")
    with pytest.raises(DataError, match=r"tiny.txt: 0 paragraphs of at least 20 words"):
        build(PMPBuildConfig(source=str(corpus), output=str(tmp_path / "p.jsonl")))


def cheerful_pairs(n: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    pick = lambda pool: " " + " ".join(rng.choice(pool) for _ in range(3))  # noqa: E731
    return [{"prompt": f"{prefix} {i}:", "chosen": pick(GOOD), "rejected": pick(BAD)} for i in range(n)]


def settings(tmp_path: Path, model_dir: Path, labels: str, **overrides) -> RewardConfig:
    base = {
        "model": str(model_dir),
        "heads": {"reward": HeadData(data=labels)},
        "output_dir": str(tmp_path / "rm"),
        "batch_size": 16,
        "eval_fraction": 0.5,
        "eval_every": 0,
        "normalize_samples": 0,
        "num_threads": 1,
    }
    return RewardConfig(**base | overrides)


def test_fine_tuning_starts_from_the_pmp_model(tmp_path: Path, tiny_model_dir: Path):
    pmp = write_jsonl(tmp_path / "pmp.jsonl", cheerful_pairs(160, 0, "Day"))
    labels = write_jsonl(tmp_path / "labels.jsonl", cheerful_pairs(32, 1, "Night"))
    # one step at a negligible rate: the held-out accuracy on the labels' task is the PMP model's
    config = settings(tmp_path, tiny_model_dir, labels, max_steps=1, learning_rate=1e-7)
    out = reward(config.model_copy(update={"pmp": PMPPhase(data=pmp, epochs=4, learning_rate=2e-3)}))
    assert json.loads((out / "pmp" / "eval.json").read_text())["eval/reward/accuracy"] > 0.9
    assert json.loads((out / "eval.json").read_text())["eval/reward/accuracy"] > 0.9
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # the fine-tuning's single step


def test_too_few_pmp_comparisons_are_refused_before_anything_is_written(tmp_path: Path, tiny_model_dir: Path):
    pmp = write_jsonl(tmp_path / "pmp.jsonl", cheerful_pairs(8, 0, "Day"))
    labels = write_jsonl(tmp_path / "labels.jsonl", cheerful_pairs(32, 1, "Night"))
    config = settings(tmp_path, tiny_model_dir, labels, pmp=PMPPhase(data=pmp))
    with pytest.raises(
        DataError, match=r"pmp.data: .*pmp.jsonl: 8 comparisons say which reply is better.*one batch \(16\)"
    ):
        reward(config)
    assert not (tmp_path / "rm").exists()


def test_the_cli_builds_comparisons_and_reports_bad_rows(tmp_path: Path, capsys):
    source = write_jsonl(tmp_path / "scored.jsonl", [{"prompt": "A?", "response": " x", "score": None}])
    output = tmp_path / "pairs.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["pmp", "build", "--set", f"source={source}", "--set", f"output={output}"])
    assert exit_info.value.code == 2
    assert "scored.jsonl:1: field 'score': a finite number is needed (got None)" in capsys.readouterr().err
    assert not output.exists()
