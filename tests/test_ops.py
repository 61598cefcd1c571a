import math

import torch

from rlhfkit.ops import masked_sum, token_logprobs


def test_masked_sum_counts_only_kept_positions():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert masked_sum(x, m).item() == 1 + 2 + 6
    assert masked_sum(x, m, dim=1).tolist() == [3.0, 6.0]


def test_token_logprobs_matches_hand_softmax():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # (1, 2, V=2)
    targets = torch.tensor([[1, 0]])
    got = token_logprobs(logits, targets)
    assert torch.allclose(got, torch.tensor([[math.log(3 / 4), math.log(1 / 2)]]))
    # temperature T divides the logits: softmax([0, ln 3] / 2) = [1, √3] / (1 + √3)
    hot = token_logprobs(logits, targets, temperature=2.0)
    assert math.isclose(hot[0, 0].item(), math.log(math.sqrt(3) / (1 + math.sqrt(3))), rel_tol=1e-6)
