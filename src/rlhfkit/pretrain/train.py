"""`rlhfkit pretrain`: train a BPE tokenizer and a small GPT-2-style model from scratch on a text corpus."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from rlhfkit import assets
from rlhfkit.data.corpus import HELD_OUT_EVERY, blocks, read_paragraphs, split_held_out
from rlhfkit.pretrain.corpus import train_tokenizer
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.lm_trainer import train_causal_lm
from rlhfkit.training.runtime import finish_run, pretrained_saver, start_run


class PretrainConfig(TrainSettings):
    """Pretraining from scratch. Defaults reproduce the embedded `tiny-austen` model."""

    corpus: str = Field("austen", description="'austen' (embedded novels) or a .txt / .txt.gz file")
    held_out_every: int = Field(HELD_OUT_EVERY, ge=2, description="hold out every N-th run of 20 paragraphs")
    vocab_size: int = Field(4096, ge=300, description="BPE vocabulary size, special tokens included")
    block_size: int = Field(256, ge=8, description="context length in tokens (also the model's maximum)")
    n_layer: int = Field(4, ge=1, description="transformer blocks")
    n_embd: int = Field(256, ge=8, description="model width")
    n_head: int = Field(4, ge=1, description="attention heads")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the model")
    output_dir: str = Field("runs/pretrain", description="where the tokenizer, checkpoints and model go")
    learning_rate: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward pass on one process")
    group_by_length: bool = Field(False, description="batch sequences of similar length (all equal here)")


def build_model(config: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    return GPT2LMHeadModel(model_config)


def pretrain(config: PretrainConfig) -> Path:
    """Tokenizer, model, training; returns the directory of the saved model."""
    accelerator = start_run(config, config)
    output_dir = Path(config.output_dir)
    paragraphs = read_paragraphs(Path(assets.resolve(config.corpus)))
    train_text, held_out_text = split_held_out(paragraphs, config.held_out_every)
    tokenizer = train_tokenizer(train_text, config.vocab_size)
    train_data = blocks(tokenizer, train_text, config.block_size)
    eval_data = blocks(tokenizer, held_out_text, config.block_size)
    model = build_model(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    accelerator.print(
        f"{n_params / 1e6:.2f}M parameters; {len(train_data)} training blocks, "
        f"{len(eval_data)} held-out blocks of {config.block_size} tokens"
    )
    result = train_causal_lm(model, tokenizer, train_data, eval_data, config, accelerator)
    model.generation_config.update(
        do_sample=True,
        max_new_tokens=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    summary = {"parameters": n_params, **result.summary}
    return finish_run(accelerator, output_dir, summary, pretrained_saver(accelerator, model, tokenizer))
