from pathlib import Path

import pytest
import torch

from rlhfkit.evaluation.policy import evaluate_policy
from rlhfkit.generation.sampling import SamplingSettings, response_sequences, sample
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.scores import distinct_n


def test_distinct_n_by_hand():
    assert distinct_n(["a b a b", "a b c"]) == pytest.approx(3 / 5)  # (a b) (b a) (a b) | (a b) (b c)
    assert distinct_n(["good good good good"]) == pytest.approx(1 / 3)


def test_response_sequences_drop_padding_and_mark_the_response(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer).eval()
    torch.manual_seed(0)
    samples = sample(model, tokenizer, ["Emma", "It is a truth universally"], SamplingSettings(max_new_tokens=5))
    for row, seq in enumerate(response_sequences(samples)):
        n_prompt = int(samples.prompt_mask[row].sum())
        assert seq.loss_mask == [0] * n_prompt + [1] * int(samples.response_mask[row].sum())
        assert tokenizer.pad_token_id not in seq.input_ids


def test_kl_of_a_policy_to_itself_is_zero_and_to_another_is_positive(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = load_model(str(tiny_model_dir), tokenizer).eval()
    other = load_model(str(tiny_model_dir), tokenizer).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a very different next-token distribution (the output layer is tied to wte)
        other.transformer.wte.weight.add_(torch.randn_like(other.transformer.wte.weight))
    prompts = ["Emma was", "Mr. Darcy", "It is a truth"] * 8
    settings = SamplingSettings(max_new_tokens=16)
    same = evaluate_policy(policy, policy, tokenizer, prompts, lambda p, r: float(len(r)), settings)
    assert same["eval/kl"] == 0.0 and same["eval/gold"] > 0
    torch.manual_seed(0)
    apart = evaluate_policy(policy, other, tokenizer, prompts, lambda p, r: 0.0, settings)
    assert apart["eval/kl"] > 0.5  # the k1 estimate of KL(policy || other) on the policy's own samples
