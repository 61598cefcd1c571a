"""Preference-model pretraining (PMP) data: many cheap comparisons derived automatically, no labeler needed.

Askell et al. 2021 (arXiv:2112.00861), section 4, and Bai et al. 2022 pretrain the reward model on such
comparisons (there: scored posts from StackExchange and Reddit, and corrupted Wikipedia edits) before
fine-tuning it on the small human set; the pretrained model needs fewer human labels for the same accuracy.
`rlhfkit pmp build` writes preference records from either source:

- a plain-text corpus (`austen`, any .txt/.txt.gz): a prompt is the opening words of a paragraph and the
  chosen reply the words that follow it; the rejected reply is that continuation corrupted: its sentences
  (or words) shuffled, truncated, replaced by the continuation of another paragraph (off-topic), or a
  phrase repeated over its end;
- a JSONL file of scored replies (`prompt_field`, `response_field`, numeric `score_field`, such as votes):
  every two replies to the same prompt with different scores, the higher scored chosen.

`rlhfkit reward --set pmp.data=FILE` then trains on them first (see `reward.train`).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError
from rlhfkit.data.corpus import read_paragraphs
from rlhfkit.data.readers import DataError, Row, read_rows

Corruption = Callable[[list[str], list[str], random.Random], list[str]]


def shuffled(reply: list[str], other: list[str], rng: random.Random) -> list[str]:
    """The reply's sentences in another order; a single sentence's words instead."""
    sentences = re.split(r"(?<=[.!?;])\s+", " ".join(reply))
    parts = sentences if len(sentences) > 1 else reply
    order = parts[:]
    while order == parts and len(set(parts)) > 1:
        rng.shuffle(order)
    return " ".join(order).split()


def truncated(reply: list[str], other: list[str], rng: random.Random) -> list[str]:
    """The reply's first words only (at most half of them): a continuation that stops short."""
    return reply[: rng.randint(1, max(1, len(reply) // 2))]


def off_topic(reply: list[str], other: list[str], rng: random.Random) -> list[str]:
    """The continuation of another paragraph, of the same length: fluent, but not a reply to this prompt."""
    return other[: len(reply)]


def repeated(reply: list[str], other: list[str], rng: random.Random) -> list[str]:
    """The reply's start, then one of its words or two-word phrases over and over to the same length."""
    start = rng.randint(1, max(1, len(reply) - 2))
    phrase = reply[start - 1 : start + rng.randint(0, 1)]
    return (reply[:start] + phrase * len(reply))[: len(reply)]


CORRUPTIONS: dict[str, Corruption] = {
    "shuffle": shuffled,
    "truncate": truncated,
    "swap": off_topic,
    "repeat": repeated,
}


class PMPBuildConfig(Config):
    """Automatically derived comparisons for preference-model pretraining."""

    source: str = Field("austen", description="plain-text corpus (austen, .txt, .txt.gz) or JSONL of scored replies")
    output: str = Field("runs/pmp/comparisons.jsonl", description="JSONL of preference records written")
    comparisons: int = Field(4000, ge=1, description="corpus: how many comparisons to derive")
    corruptions: list[str] = Field(list(CORRUPTIONS), description=f"corpus: rejected replies: {', '.join(CORRUPTIONS)}")
    prompt_words: tuple[int, int] = Field((4, 8), description="corpus: words of a prompt, drawn from this range")
    reply_words: tuple[int, int] = Field((4, 12), description="corpus: words of a reply, drawn from this range")
    prompt_field: str = Field("prompt", description="scored JSONL: the prompt column")
    response_field: str = Field("response", description="scored JSONL: the reply column")
    score_field: str = Field("score", description="scored JSONL: the numeric score column (higher is better)")
    min_comparisons: int = Field(100, ge=1, description="fewer comparisons than this is an error")
    seed: int = Field(0, description="seed of the sampling and corruptions")


def is_corpus(source: str) -> bool:
    return source == "austen" or source.endswith((".txt", ".txt.gz"))


def corpus_comparisons(config: PMPBuildConfig) -> list[dict[str, Any]]:
    """`comparisons` records from paragraphs long enough for the longest prompt and reply."""
    unknown = [name for name in config.corruptions if name not in CORRUPTIONS]
    if unknown or not config.corruptions:
        raise ConfigError(f"corruptions: {unknown or 'none'}; choose from {', '.join(CORRUPTIONS)}")
    path = Path(assets.resolve(config.source))
    if not path.exists():
        raise DataError(f"{path}: no such file")
    need = config.prompt_words[1] + config.reply_words[1]
    paragraphs = [p.split() for p in read_paragraphs(path) if len(p.split()) >= need]
    if len(paragraphs) < 2:
        raise DataError(
            f"{path}: {len(paragraphs)} paragraphs of at least {need} words (prompt_words + reply_words): "
            "need two or more to derive comparisons"
        )
    rng = random.Random(config.seed)
    rows: list[dict[str, Any]] = []
    while len(rows) < config.comparisons:
        words, other = rng.sample(paragraphs, 2)
        n_prompt, n_reply = rng.randint(*config.prompt_words), rng.randint(*config.reply_words)
        reply = words[n_prompt : n_prompt + n_reply]
        name = config.corruptions[len(rows) % len(config.corruptions)]
        rejected = CORRUPTIONS[name](reply, other[n_prompt:], rng)
        if rejected != reply:  # e.g. a reply of one repeated word cannot be shuffled
            prompt = " ".join(words[:n_prompt])
            rows.append({"prompt": prompt, "chosen": " " + " ".join(reply), "rejected": " " + " ".join(rejected)})
            rows[-1]["corruption"] = name
    return rows


def scored_field(row: Row, field: str) -> Any:
    if field not in row.data:
        raise DataError(f"{row.location}: field '{field}': missing (fields: {', '.join(row.data) or 'none'})")
    return row.data[field]


def scored_comparisons(config: PMPBuildConfig) -> list[dict[str, Any]]:
    """Every pair of differently scored replies to the same prompt, the higher scored chosen, with the gap
    as the margin; a DataError names the file, row and field of a bad row, or why too few pairs were found."""
    groups: dict[str, list[tuple[Any, Any, float, str]]] = {}
    for row in read_rows(assets.resolve(config.source)):
        prompt, reply = scored_field(row, config.prompt_field), scored_field(row, config.response_field)
        score = scored_field(row, config.score_field)
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise DataError(f"{row.location}: field '{config.score_field}': a finite number is needed (got {score!r})")
        groups.setdefault(json.dumps(prompt), []).append((prompt, reply, float(score), row.location))
    rows = []
    for replies in groups.values():
        for i, (prompt, a, score_a, _) in enumerate(replies):
            for _, b, score_b, _ in replies[i + 1 :]:
                if score_a != score_b and a != b:
                    chosen, rejected = (a, b) if score_a > score_b else (b, a)
                    rows.append(
                        {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": abs(score_a - score_b)}
                    )
    if len(rows) < config.min_comparisons:
        alone = [replies[0][3] for replies in groups.values() if len({s for _, _, s, _ in replies}) < 2]
        raise DataError(
            f"{config.source}: {len(rows)} comparisons, fewer than min_comparisons={config.min_comparisons}: "
            f"a comparison needs two replies with the same field '{config.prompt_field}' and different field "
            f"'{config.score_field}'; {len(alone)} of {len(groups)} prompts have no such pair"
            + (f" (first: {alone[0]})" if alone else "")
        )
    return rows


def build(config: PMPBuildConfig) -> Path:
    """Derive the comparisons and write them to `config.output` (nothing is written if that fails)."""
    rows = corpus_comparisons(config) if is_corpus(config.source) else scored_comparisons(config)
    if len(rows) < config.min_comparisons:
        raise DataError(
            f"{config.source}: {len(rows)} comparisons, fewer than min_comparisons={config.min_comparisons}"
        )
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
    partial.replace(output)  # the file appears whole or not at all
    return output
