import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rlhfkit import assets
from rlhfkit.cli import main
from rlhfkit.data.corpus import blocks, read_paragraphs, split_held_out
from rlhfkit.models.loading import PAD_TOKEN, ModelNotFoundError, ensure_distinct_pad, load_model, load_tokenizer
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


def test_unknown_hub_name_fails_without_network_naming_where_it_looked():
    with pytest.raises(ModelNotFoundError, match=r"no hub model 'gpt2-not-here' in the local hub cache"):
        load_tokenizer("gpt2-not-here")


def test_a_missing_or_empty_model_directory_is_named(tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match=rf"^model {tmp_path}/nope: no such directory {tmp_path}/nope$"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match=rf"{tmp_path} is a directory without config.json"):
        load_tokenizer(str(tmp_path))


def test_the_cli_reports_a_missing_model_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--set", f"model={tmp_path}/runs/sft-typo", "--set", f"output_dir={tmp_path}/out"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip() == f"model {tmp_path}/runs/sft-typo: no such directory {tmp_path}/runs/sft-typo"
    )
