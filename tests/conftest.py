"""Shared fixtures: a tiny GPT-2 and tokenizer built in seconds, so tests never touch a hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhfkit import assets
from rlhfkit.data.corpus import read_paragraphs
from rlhfkit.pretrain.corpus import train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def austen_paragraphs() -> list[str]:
    return read_paragraphs(Path(assets.resolve("austen")))[:400]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, austen_paragraphs: list[str]) -> Path:
    """A 2-layer, 64-wide GPT-2 with a 512-token BPE tokenizer, saved as a normal checkpoint."""
    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = train_tokenizer(austen_paragraphs, vocab_size=512)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
