import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rlhfkit import assets
from rlhfkit.data.corpus import blocks, read_paragraphs, split_held_out
from rlhfkit.models.loading import PAD_TOKEN, ensure_distinct_pad, load_model, load_tokenizer
from rlhfkit.pretrain.train import PretrainConfig
from rlhfkit.training.batching import pad_batch
from rlhfkit.training.lm_trainer import NextTokenLoss


def test_pad_equal_to_eos_is_replaced_and_embeddings_grow(tmp_path: Path, tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_tokens(["<|brand-new|>"])
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == PAD_TOKEN and loaded.pad_token_id != loaded.eos_token_id
    model = load_model(str(tiny_model_dir), loaded)
    assert model.get_input_embeddings().weight.shape[0] == len(loaded)
    assert model.config.pad_token_id == loaded.pad_token_id
    assert not ensure_distinct_pad(loaded)  # idempotent


def test_tiny_austen_loads_by_name_and_models_held_out_austen():
    tokenizer = load_tokenizer("tiny-austen")
    model = load_model("tiny-austen", tokenizer).eval()
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert 4e6 < sum(p.numel() for p in model.parameters()) < 10e6
    config = PretrainConfig()
    _, held_out = split_held_out(read_paragraphs(Path(assets.resolve("austen"))), config.held_out_every)
    data = blocks(tokenizer, held_out, config.block_size)[:16]
    batch = pad_batch(data, tokenizer.pad_token_id)
    with torch.no_grad():
        nll, count = NextTokenLoss(model)(batch.input_ids, batch.attention_mask, batch.loss_mask)
    perplexity = math.exp(nll.item() / count.item())
    assert perplexity < TINY_AUSTEN_MAX_PPL, perplexity  # a random 4,096-token model scores about 4,096


TINY_AUSTEN_MAX_PPL = 80


@pytest.mark.parametrize("name", ["gpt2-that-does-not-exist-locally"])
def test_unknown_local_name_fails_without_network(name: str):
    with pytest.raises(OSError):
        load_tokenizer(name)
