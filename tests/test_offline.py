import json
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.data.readers import DataError
from rlhfkit.generation.sampling import SamplingSettings, sample
from rlhfkit.models.ilql import HEADS_CONFIG, AdvantagePerturbedHead, perturbed_logits
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.offline.losses import (
    awr_weights,
    bellman_targets,
    cql_loss,
    expectile_loss,
    polyak_update,
    q_loss,
)
from rlhfkit.offline.train import OfflineConfig, offline
from rlhfkit.scores import vader


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_bellman_targets_bootstrap_from_the_next_value_and_end_on_the_reward():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    actions = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]).bool()
    # row 0: γ·V(s_2), γ·V(s_3), then R at the last action; row 1: a single (terminal) action
    close(bellman_targets(values, actions, torch.tensor([10.0, -1.0]), gamma=0.5), [
        [0.0, 1.5, 2.0, 10.0, 0.0],
        [0.0, 0.0, -1.0, 0.0, 0.0],
    ])  # fmt: skip


def test_q_expectile_and_cql_losses_on_hand_computed_values():
    close(q_loss(torch.tensor([1.0, -1.0]), torch.tensor([3.0, -1.5])), [4.0, 0.25])
    # u = Q̂ - V = 1 (weight τ) and -1 (weight 1 - τ)
    close(expectile_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), tau=0.8), [0.8, 0.2])
    # softmax([0, ln 3]) = [1/4, 3/4]
    q = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    close(cql_loss(q, torch.tensor([1, 0])), [math.log(4 / 3), math.log(4.0)])


def test_awr_weights_and_polyak_update():
    # mean reward 1: exp(-1), exp(0), exp(1) clipped to 2
    close(awr_weights(torch.tensor([0.0, 1.0, 2.0]), temperature=1.0, max_weight=2.0), [math.exp(-1), 1.0, 2.0])
    target, online = torch.tensor([0.0, 4.0]), torch.tensor([1.0, 0.0])
    polyak_update([target], [online], rate=0.25)
    close(target, [0.25, 3.0])


def test_perturbed_logits_add_beta_times_min_q_minus_v():
    logits, q1, q2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 4.0]])
    # min Q = [1, 0]; A = [0.5, -0.5]
    close(perturbed_logits(logits, q1, q2, torch.tensor([[0.5]]), beta=2.0), [[2.0, 1.0]])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_records_without_a_reward_fail_naming_file_row_and_field_with_nothing_written(tiny_model_dir, tmp_path):
    data = write_jsonl(
        tmp_path / "scored.jsonl",
        [{"prompt": "She was", "response": " happy.", "reward": 0.6}, {"prompt": "He was", "response": " sad."}],
    )
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"scored\.jsonl:2: field 'reward': Field required"):
        offline(OfflineConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(out), max_steps=1))
    assert not out.exists()


def test_awr_raises_the_likelihood_of_the_rewarded_reply_over_the_other(tiny_model_dir, tmp_path):
    rows = [{"prompt": "She was", "response": r, "reward": w} for r, w in ((" glad.", 1.0), (" cross.", -1.0))]
    out = offline(
        OfflineConfig(model=str(tiny_model_dir), data=str(write_jsonl(tmp_path / "d.jsonl", rows)), method="awr",
                      output_dir=str(tmp_path / "awr"), max_steps=8, batch_size=2, micro_batch_size=2,
                      learning_rate=1e-3, num_threads=1)
    )  # fmt: skip
    assert not (out / HEADS_CONFIG).exists()

    def margin(path: Path) -> float:
        tokenizer = load_tokenizer(str(path))
        model = load_model(str(path), tokenizer).eval()
        logps = []
        for reply in (" glad.", " cross."):
            ids = torch.tensor([tokenizer("She was" + reply)["input_ids"]])
            with torch.no_grad():
                logps.append(torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum())
        return float(logps[0] - logps[1])

    assert margin(out) > margin(tiny_model_dir) + 1.0


POSITIVE = [" happy", " delighted", " glad", " good"]
NEGATIVE = [" sad", " miserable", " angry", " bad"]


def test_advantage_perturbed_samples_score_higher_on_the_reward_than_the_base(tmp_path):
    """ILQL on one-word replies scored by VADER: the saved dir loads as the perturbed policy, which samples
    replies of higher VADER score than the same LM without the perturbation (β = 0, same per-row seeds).
    The reward reaches the word's Q through V of the state after it (Q(s₀, w) ← γ·V(s₁) ← Q̂(s₁, EOS) ← R)."""
    prompts = ["She was", "He felt", "They were", "Emma was", "It was", "The party was", "Her mother was", "I am"]
    rows = [{"prompt": p, "response": r, "reward": vader(p, r)} for p in prompts for r in POSITIVE + NEGATIVE]
    out = offline(
        OfflineConfig(model="tiny-austen", data=str(write_jsonl(tmp_path / "d.jsonl", rows)),
                      output_dir=str(tmp_path / "ilql"), max_steps=60, batch_size=16, micro_batch_size=16,
                      learning_rate=5e-4, head_learning_rate=1e-2, cql_alpha=0.01, polyak_rate=0.5, beta=8.0,
                      num_threads=2, log_every=60)
    )  # fmt: skip
    settings = SamplingSettings(max_new_tokens=6)

    def mean_reward(beta: float) -> float:
        config = json.loads((out / HEADS_CONFIG).read_text())
        (out / HEADS_CONFIG).write_text(json.dumps(config | {"beta": beta}))
        tokenizer = load_tokenizer(str(out))
        model = load_model(str(out), tokenizer).eval()
        assert isinstance(model.get_output_embeddings(), AdvantagePerturbedHead)
        many = prompts * 4
        texts = sample(model, tokenizer, many, settings, seeds=list(range(len(many)))).texts
        return sum(vader(p, t) for p, t in zip(many, texts, strict=True)) / len(many)

    perturbed, base = mean_reward(8.0), mean_reward(0.0)
    assert perturbed > base + 0.2, (perturbed, base)
