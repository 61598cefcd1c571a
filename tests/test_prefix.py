"""Repeated prompts read once (`models.prefix`): the update's log-probs, values and gradients equal those of
the full rows."""

from pathlib import Path

import pytest
import torch

from rlhfkit.models.loading import LoraSettings, load_model, load_tokenizer
from rlhfkit.models.prefix import shared_prompts
from rlhfkit.ppo.model import build_actor_critic
from rlhfkit.training.batching import TokenSequence, pad_batch


def rows(prompt: list[int], responses: list[list[int]]) -> list[TokenSequence]:
    return [TokenSequence(prompt + r, [0] * len(prompt) + [1] * len(r)) for r in responses]


def test_layout_reads_each_prompt_once():
    sequences = rows([5, 6, 7], [[1], [2, 3]]) + rows([8, 9], [[4, 4, 4]]) + rows([5, 6, 7], [[3]])
    shared = shared_prompts(sequences, pad_id=0)
    assert shared is not None
    assert shared.prefix_ids.tolist() == [[5, 6], [0, 8]]  # the distinct prompts but their last token, left-padded
    assert shared.prefix_mask.tolist() == [[1, 1], [0, 1]]
    assert shared.rows.tolist() == [0, 0, 1, 0]
    assert shared.batch.input_ids.tolist() == [[7, 1, 0, 0], [7, 2, 3, 0], [9, 4, 4, 4], [7, 3, 0, 0]]
    assert shared.batch.loss_mask.tolist() == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0]]
    assert shared.positions.tolist() == [[2, 3, 4, 5], [2, 3, 4, 5], [1, 2, 3, 4], [2, 3, 4, 5]]
    assert shared_prompts(rows([5, 6], [[1]]) + rows([7, 6], [[1]]), pad_id=0) is None  # nothing repeats
    assert shared_prompts(rows([5], [[1], [2]]), pad_id=0) is None  # a one-token prompt has no prefix


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompts_give_the_full_rows_logprobs_values_and_gradients(tiny_model_dir: Path, lora: bool):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = load_model(str(tiny_model_dir), tokenizer, LoraSettings(enabled=lora))
    model = build_actor_critic(policy, str(tiny_model_dir), tokenizer, "shared", None, temperature=0.7)
    torch.nn.init.normal_(model.value_head.weight)  # a value head that reads something
    long, short = tokenizer("It is a truth universally acknowledged").input_ids, tokenizer("Emma was").input_ids
    generator = torch.Generator().manual_seed(0)

    def reply(n: int) -> list[int]:
        return torch.randint(3, len(tokenizer), (n,), generator=generator).tolist()

    sequences = rows(long, [reply(5), reply(2), reply(7)]) + rows(short, [reply(4), reply(6)])
    sequences.insert(2, sequences.pop())  # prompts interleaved, as a shuffled minibatch has them
    full = pad_batch(sequences, tokenizer.pad_token_id)
    shared = shared_prompts(sequences, tokenizer.pad_token_id)
    assert shared is not None and len(shared.prefix_ids) == 2
    results = []
    for batch, layout in ((full, None), (shared.batch, shared)):
        model.zero_grad()
        logprobs, values, _ = model(batch.input_ids, batch.attention_mask, batch.loss_mask[:, 1:].bool(), shared=layout)
        (logprobs.sum() + values.square().sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((logprobs.detach(), values.detach(), grads))
    (logprobs_a, values_a, grads_a), (logprobs_b, values_b, grads_b) = results
    assert logprobs_a.shape == (sum(sum(s.loss_mask) for s in sequences),)
    torch.testing.assert_close(logprobs_b, logprobs_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values_b, values_a, atol=1e-5, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads_a)
    for a, b in zip(grads_a, grads_b, strict=True):  # float32 sums in another order: close in norm
        assert (b - a).norm() <= 1e-4 * a.norm() + 1e-6
