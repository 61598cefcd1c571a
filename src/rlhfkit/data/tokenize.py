"""SFT examples as token sequences whose loss mask covers the response only.

Plain text: `prompt` tokens are context, `completion` tokens plus EOS are trained. Chat: the chat template
renders the conversation; only the assistant turns (with the template's end-of-turn tokens) are trained.
The conversation is tokenized piece by piece (context, reply, context, ...) so each mask boundary falls on
a piece boundary, never inside a merged token.
"""

from __future__ import annotations

from typing import Any, cast

from transformers import PreTrainedTokenizerBase

from rlhfkit.data.records import SFTRecord
from rlhfkit.training.batching import TokenSequence, fit_to_length


def _messages(value: Any) -> list[dict[str, str]]:
    return [m.model_dump() for m in value]


def chat_pieces(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """(text, trained) pieces whose concatenation is the rendered conversation."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = cast(str, tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        through = cast(str, tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        if not (before.startswith(done) and through.startswith(before)):
            raise ValueError(
                "the chat template does not render a conversation as a growing prefix; response-only masking needs that"
            )
        pieces += [(before[len(done) :], False), (through[len(before) :], True)]
        done = through
    return pieces


def text_pieces(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str) -> list[tuple[str, bool]]:
    eos = tokenizer.eos_token or ""
    return [(prompt, False), (completion + eos, True)]


def record_pieces(tokenizer: PreTrainedTokenizerBase, record: SFTRecord) -> list[tuple[str, bool]]:
    """The pieces of any SFT record shape: messages, chat prompt/completion, or text prompt/completion."""
    if record.messages is not None:
        return chat_pieces(tokenizer, _messages(record.messages))
    if isinstance(record.prompt, str):  # records never mix text and chat (SFTRecord validates it)
        return text_pieces(tokenizer, record.prompt, cast(str, record.completion))
    return chat_pieces(tokenizer, _messages(record.prompt) + _messages(record.completion))


def sft_sequence(tokenizer: PreTrainedTokenizerBase, record: SFTRecord) -> TokenSequence:
    """Token ids and the response-only loss mask of the whole record."""
    ids: list[int] = []
    mask: list[int] = []
    for index, (text, trained) in enumerate(record_pieces(tokenizer, record)):
        # Special tokens (e.g. a BOS) belong only at the very start of the sequence.
        piece = tokenizer(text, add_special_tokens=index == 0)["input_ids"]
        ids += piece
        mask += [int(trained)] * len(piece)
    return TokenSequence(ids, mask)


def tokenize_sft(tokenizer: PreTrainedTokenizerBase, record: SFTRecord, max_length: int) -> TokenSequence:
    """`sft_sequence` fitted to `max_length` tokens (`fit_to_length`: the prompt loses its start first)."""
    return fit_to_length(sft_sequence(tokenizer, record), max_length)


def pack(sequences: list[TokenSequence], max_length: int) -> list[TokenSequence]:
    """Concatenate examples into rows of at most `max_length` tokens (first fit, longest first).

    Fewer, fuller rows mean less padding; attention does cross example boundaries within a row, the usual
    trade-off of packing without variable-length attention kernels.
    """
    rows: list[tuple[list[int], list[int]]] = []
    for seq in sorted(sequences, key=lambda s: -len(s.input_ids)):
        target = next((r for r in rows if len(r[0]) + len(seq.input_ids) <= max_length), None)
        if target is None:
            rows.append((list(seq.input_ids), list(seq.loss_mask)))
        else:
            target[0].extend(seq.input_ids)
            target[1].extend(seq.loss_mask)
    return [TokenSequence(ids, mask) for ids, mask in rows]
