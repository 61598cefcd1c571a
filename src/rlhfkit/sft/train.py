"""`rlhfkit sft`: supervised fine-tuning on demonstrations, loss on the response tokens only.

InstructGPT's first stage (Ouyang et al. 2022, arXiv:2203.02155, section 3.5): fine-tune the pretrained
model on labeler demonstrations with the language-modelling loss.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field

from rlhfkit import assets
from rlhfkit.data.records import load_records
from rlhfkit.data.tokenize import pack, tokenize_sft
from rlhfkit.models.loading import LoraSettings, load_model, load_tokenizer, usable_length
from rlhfkit.training.batching import TokenSequence, cut_prompts_note
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.lm_trainer import train_causal_lm
from rlhfkit.training.runtime import finish_run, pretrained_saver, start_run


class SFTConfig(TrainSettings):
    """Supervised fine-tuning of a causal LM on prompt/completion or chat-message demonstrations."""

    model: str = Field("tiny-austen", description="model to tune: default name, local path or hub id")
    data: str = Field("demo-sft", description="SFT data: JSONL/JSON/Parquet file, save_to_disk dir, or 'demo-sft'")
    eval_data: str | None = Field(None, description="held-out SFT data (default: a split of `data`)")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of `data` held out when eval_data is unset")
    max_length: int = Field(
        256, ge=2, description="tokens per example; longer: the prompt loses its start (to half), the reply its end"
    )
    packing: bool = Field(False, description="pack several examples into each max_length row")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters")
    output_dir: str = Field("runs/sft", description="where checkpoints, metrics.jsonl and the model go")
    learning_rate: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    eval_every: int = Field(50, ge=0, description="held-out evaluation every N steps (0: only at the end)")


def tokenize_file(path: str, tokenizer, max_length: int) -> list[TokenSequence]:
    return [tokenize_sft(tokenizer, r, max_length) for r in load_records(assets.resolve(path), "sft")]


def split(data: list[TokenSequence], fraction: float, seed: int) -> tuple[list[TokenSequence], list[TokenSequence]]:
    """(train, held-out) by a seeded shuffle; at least one held-out example when fraction > 0."""
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(fraction * len(data))) if fraction > 0 else 0
    return [data[i] for i in order[n_held:]], [data[i] for i in order[:n_held]]


def sft(config: SFTConfig) -> Path:
    """Tune `config.model` on `config.data`; returns the directory of the saved model."""
    accelerator = start_run(config, config)
    tokenizer = load_tokenizer(config.model)
    max_length = usable_length(config.model, config.max_length)
    train_data = tokenize_file(config.data, tokenizer, max_length)
    if config.eval_data is not None:
        eval_data = tokenize_file(config.eval_data, tokenizer, max_length)
    else:
        train_data, eval_data = split(train_data, config.eval_fraction, config.seed)
    for note in cut_prompts_note(train_data + eval_data, max_length, "examples"):
        accelerator.print(f"[data] {note}")
    if config.packing:
        train_data = pack(train_data, max_length)
    model = load_model(config.model, tokenizer, config.lora)
    accelerator.print(f"SFT of {config.model}: {len(train_data)} training sequences, {len(eval_data)} held out")
    result = train_causal_lm(model, tokenizer, train_data, eval_data, config, accelerator)
    return finish_run(
        accelerator, Path(config.output_dir), result.summary, pretrained_saver(accelerator, model, tokenizer)
    )
