import json
from pathlib import Path

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.generation.generate import GenerateConfig, generate
from rlhfkit.generation.sampling import (
    SamplingSettings,
    encode_prompts,
    response_mask,
    sample,
    shared_prompt_cache,
)
from rlhfkit.models.loading import LoraSettings, load_model, load_tokenizer


def test_response_mask_ends_at_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert response_mask(ids, eos_token_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_generation_stops_at_eos_and_pads_after(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer).eval()
    with torch.no_grad():  # make EOS likely (about 1 in 4 per step) so some rows end early
        model.lm_head.weight.zero_()
        model.transformer.wte.weight[tokenizer.eos_token_id].zero_()
    model.config.tie_word_embeddings = False
    with torch.no_grad():
        head = torch.nn.Linear(model.config.n_embd, len(tokenizer), bias=True)
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = torch.log(torch.tensor(len(tokenizer) / 3.0))
    model.lm_head = head
    torch.manual_seed(0)
    prompts = ["Emma was", "It is a truth universally acknowledged that", "Mr. Darcy"] * 4
    out = sample(model, tokenizer, prompts, SamplingSettings(max_new_tokens=12))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ended = 0
    for ids, mask, text in zip(out.response_ids.tolist(), out.response_mask.tolist(), out.texts, strict=True):
        if eos in ids:
            end = ids.index(eos)
            ended += end < len(ids) - 1
            assert mask == [1] * (end + 1) + [0] * (len(ids) - end - 1)
            assert ids[end + 1 :] == [pad] * (len(ids) - end - 1)
        assert "<|endoftext|>" not in text and "<|pad|>" not in text
    assert ended >= 3  # several rows stopped before the token limit
    assert out.prompt_ids.shape[1] == out.prompt_mask.shape[1]
    assert out.prompt_mask[:, -1].all()  # left padding: every prompt ends at the last column


def test_seeded_rows_sample_the_same_whatever_their_batch(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer).eval()
    prompts = ["Emma was", "It is a truth universally acknowledged that", "Mr. Darcy", "She"]
    settings = SamplingSettings(max_new_tokens=10, top_k=50)
    together = sample(model, tokenizer, prompts, settings, seeds=[11, 12, 13, 14]).texts
    torch.manual_seed(123)  # the global generator plays no part
    seeds = [11, 12, 13, 14]
    apart = [sample(model, tokenizer, [p], settings, seeds=[s]).texts[0] for p, s in zip(prompts, seeds, strict=True)]
    assert together == apart
    assert sample(model, tokenizer, prompts[:1], settings, seeds=[99]).texts != together[:1]


@pytest.mark.parametrize("lora", [False, True])
def test_repeated_prompts_share_one_prefill(tiny_model_dir: Path, lora: bool):
    """G samples of a prompt read one prefill of it (copied to their rows); each row samples as it would from
    its own full prefill, the shorter prompt left-padded (positions follow the padding, also under LoRA)."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer, LoraSettings(enabled=lora)).eval()
    prompts = ["Emma was"] * 3 + ["It is a truth universally acknowledged that"] * 3
    settings = SamplingSettings(max_new_tokens=10, top_k=50)
    encoded = encode_prompts(tokenizer, prompts, None)
    (cache,) = shared_prompt_cache(model, encoded).values()
    assert cache.get_seq_length() == encoded["input_ids"].shape[1] - 1 and cache.layers[0].keys.shape[0] == 6
    assert shared_prompt_cache(model, encode_prompts(tokenizer, prompts[2:4], None)) == {}  # nothing repeats
    together = sample(model, tokenizer, prompts, settings, seeds=list(range(6))).texts
    apart = [sample(model, tokenizer, [p], settings, seeds=[s]).texts[0] for s, p in enumerate(prompts)]
    assert together == apart
    assert len(set(together)) == 6  # each row its own seed


def test_seeded_sampling_draws_from_the_softmax():
    from rlhfkit.generation.sampling import SeededGumbelSampler

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(4000, 4)
    sampler = SeededGumbelSampler(list(range(4000)), SamplingSettings(temperature=2.0))
    counts = torch.bincount(sampler(torch.zeros(4000, 1, dtype=torch.long), logits).argmax(-1), minlength=4)
    assert torch.allclose(counts / 4000, torch.softmax(logits[0] / 2.0, -1), atol=0.03)


def test_generate_command_writes_k_responses_per_prompt(tmp_path: Path, tiny_model_dir: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Emma was"}\n{"prompt": [{"role": "user", "content": "Hello"}]}\n')
    config = load_config(
        GenerateConfig,
        None,
        [
            f"model={tiny_model_dir}",
            f"prompts={prompts}",
            f"output={tmp_path / 'out.jsonl'}",
            "num_samples=3",
            "sampling.max_new_tokens=4",
        ],
    )
    rows = [json.loads(line) for line in generate(config).read_text().splitlines()]
    assert [len(r["responses"]) for r in rows] == [3, 3]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Hello"}]
