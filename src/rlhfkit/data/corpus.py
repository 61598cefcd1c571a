"""Plain-text corpora: paragraphs of a .txt[.gz] file, a held-out split, fixed-size token blocks."""

from __future__ import annotations

import gzip
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from rlhfkit.training.batching import TokenSequence

HELD_OUT_EVERY = 50  # `rlhfkit pretrain` holds out every 50th run of paragraphs (as `tiny-austen` was trained)


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
    train: list[str] = []
    held_out: list[str] = []
    for i, p in enumerate(paragraphs):
        (held_out if (i // run) % every == 0 else train).append(p)
    return train, held_out


def blocks(tokenizer: PreTrainedTokenizerBase, paragraphs: list[str], size: int) -> list[TokenSequence]:
    """The paragraphs as one token stream, cut into non-overlapping blocks of `size` tokens."""
    stream = tokenizer("\n\n".join(paragraphs))["input_ids"]
    return [TokenSequence(stream[i : i + size], [1] * size) for i in range(0, len(stream) - size + 1, size)]
