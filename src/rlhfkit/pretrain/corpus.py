"""Plain-text corpora for pretraining: unwrapping, a held-out split, a BPE tokenizer trained on them."""

from __future__ import annotations

import gzip
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS, PAD = "<|endoftext|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Chat turns as role tokens; an assistant turn ends with EOS so a chat-tuned model learns to stop.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}" + EOS + "{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def read_paragraphs(path: Path) -> list[str]:
    """Paragraphs (blank-line separated) with the hard line wraps of printed text removed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    paragraphs = (" ".join(block.split()) for block in text.split("\n\n"))
    return [p for p in paragraphs if p]


def split_held_out(paragraphs: list[str], every: int, run: int = 20) -> tuple[list[str], list[str]]:
    """(train, held-out): every `every`-th run of `run` consecutive paragraphs is held out.

    Contiguous runs keep held-out text out of the training context windows around it.
    """
    train, held_out = [], []
    for i, p in enumerate(paragraphs):
        (held_out if (i // run) % every == 0 else train).append(p)
    return train, held_out


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme: no unknown tokens) with EOS, pad and chat role tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
