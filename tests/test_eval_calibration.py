import json
from pathlib import Path

import pytest
import torch

from rlhfkit import assets
from rlhfkit.data.readers import DataError
from rlhfkit.evaluation.calibration import (
    ProbeItem,
    calibration,
    cloze_items,
    continuation_probabilities,
    letter_probabilities,
    load_probe,
    probe_calibration,
    reliability_bins,
)
from rlhfkit.evaluation.policy import response_logprobs
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.training.batching import TokenSequence


def test_ece_by_hand():
    # 4 items, 2 options each. Confidences 0.9, 0.9 (bin 9: one right, accuracy 0.5), 0.6, 0.6 (bin 6: both right)
    probabilities = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    answers = torch.tensor([0, 0, 0, 1])
    fit = calibration(probabilities, answers, bins=10)
    # ECE = 2/4·|0.5 - 0.9| + 2/4·|1.0 - 0.6| = 0.2 + 0.2
    assert fit.ece == pytest.approx(0.4)
    assert fit.accuracy == pytest.approx(0.75) and fit.confidence == pytest.approx(0.75)
    assert [(round(b.lower, 1), b.count, b.accuracy) for b in fit.bins if b.count] == [(0.6, 2, 1.0), (0.9, 2, 0.5)]
    assert sum(b.count for b in fit.bins) == 4 and len(fit.bins) == 10


def test_reliability_bins_give_back_the_ece():
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(500, generator=generator) * 0.5 + 0.5  # P(option 0), the answer given
    correct = (torch.rand(500, generator=generator) < confidence**2).float()  # overconfident
    bins = reliability_bins(confidence, correct, 10)
    ece = sum(b.count / 500 * abs(b.accuracy - b.confidence) for b in bins if b.count)
    fit = calibration(torch.stack([confidence, 1 - confidence], 1), 1 - correct.long(), 10)
    assert fit.ece == pytest.approx(ece, abs=1e-6) and fit.ece > 0.1
    assert [b.accuracy for b in bins[:5]] == [None] * 5 and sum(b.count for b in bins) == 500


def test_a_calibrated_predictor_has_small_ece():
    generator = torch.Generator().manual_seed(1)
    confidence = torch.rand(20_000, generator=generator) * 0.5 + 0.5
    right = torch.rand(20_000, generator=generator) < confidence
    probabilities = torch.stack([confidence, 1 - confidence], 1)
    assert calibration(probabilities, torch.where(right, 0, 1)).ece < 0.02


def test_continuation_probabilities_are_the_normalised_option_likelihoods(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer).eval()
    items = [
        ProbeItem(question="It is a truth universally", options=["acknowledged", "house", "the"], answer=0),
        ProbeItem(question="Emma was", options=["happy", "sad"], answer=1),
        ProbeItem(
            question="She had been", options=["unaccountably", "a very great deal", "xylophone sonata"], answer=1
        ),
    ]
    probabilities = continuation_probabilities(model, tokenizer, items, 2)  # questions of two lengths: left padding
    assert probabilities.shape == (3, 3) and probabilities[1, 2] == 0
    assert probabilities.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    for row, item in enumerate(items):  # against each option scored as one whole sequence
        question = tokenizer.encode(item.question)
        sums = []
        for option in item.options:
            ids = tokenizer.encode(" " + option)
            sequence = TokenSequence(question + ids, [0] * len(question) + [1] * len(ids))
            sums.append(response_logprobs(model, [sequence], tokenizer.pad_token_id).sum())
        expected = torch.stack(sums).softmax(0).tolist()
        assert probabilities[row, : len(expected)].tolist() == pytest.approx(expected, abs=1e-5)
    letters = letter_probabilities(model, tokenizer, items, 1)
    assert letters.shape == (3, 3) and letters.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    fit = probe_calibration(model, tokenizer, items, "letter", bins=5)
    assert fit.items == 3 and len(fit.bins) == 5


def test_cloze_items_hold_the_true_next_word():
    paragraphs = [
        "She was the youngest of the two daughters of a most affectionate indulgent father and had in "
        "consequence of her sister's marriage been mistress of his house from a very early period",
    ] * 3
    items = cloze_items(paragraphs, count=5, seed=0, band=(0, 40))
    assert len(items) == 5
    for item in items:
        words = paragraphs[0].split()
        k = len(item["question"].split())
        assert len(set(item["options"])) == 4 and item["options"][item["answer"]] == words[k]
        assert paragraphs[0].startswith(item["question"])


def test_packaged_cloze_probe_loads_and_the_tiny_austen_model_beats_chance_on_it():
    items = load_probe("cloze-probe")
    assert len(items) == 300 and all(len(i.options) == 4 for i in items)
    assert {i.answer for i in items} == {0, 1, 2, 3}
    tokenizer = load_tokenizer("tiny-austen")
    model = load_model("tiny-austen", tokenizer).eval()
    fit = probe_calibration(model, tokenizer, items[:60], "continuation")
    assert fit.accuracy > 0.5  # chance is 0.25


def test_probe_errors_name_the_row(tmp_path: Path):
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": 0}) + "\n")
    assert load_probe(str(path))[0].options == ["a", "b"]
    path.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(DataError, match=r"probe.jsonl:1"):
        load_probe(str(path))
    assert Path(assets.resolve("cloze-probe")).exists()
