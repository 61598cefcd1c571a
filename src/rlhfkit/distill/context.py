"""The context to distil: a list of chat messages (a preamble, then example dialogues) put before each prompt.

`hhh-context` (src/rlhfkit/assets/hhh-context.yaml) is the packaged one. A prompt is asked after the
context's messages (the teacher) or alone (the student); a text prompt is one user turn. A context that
leaves no room in the model's window for a prompt and its reply is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError
from transformers import PreTrainedTokenizerBase

from rlhfkit import assets
from rlhfkit.config import format_validation_error
from rlhfkit.data.readers import DataError
from rlhfkit.data.records import Message, Text
from rlhfkit.generation.sampling import render_prompt


class Context(BaseModel):
    """The file's shape: `messages`, a non-empty list of {role, content}."""

    messages: list[Message] = Field(min_length=1)


@dataclass(frozen=True)
class PromptRow:
    """A prompt and where it was read (file:line), for errors that name the row."""

    prompt: Text
    location: str


def load_context(name_or_path: str) -> list[dict[str, str]]:
    """The context's messages; a missing, unreadable or malformed file is a DataError naming it and the field."""
    path = Path(assets.resolve(name_or_path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: context file not found") from None
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML: {error}") from None
    try:
        return [m.model_dump() for m in Context.model_validate(data).messages]
    except ValidationError as error:
        raise DataError(format_validation_error(Context, error, str(path))) from None


def as_messages(prompt: Text) -> list[dict[str, str]]:
    """A chat prompt's messages; a text prompt as one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [m.model_dump() for m in prompt]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """The rendered conversation's token ids, up to the assistant's turn, as `generation.sample` encodes them."""
    return tokenizer(render_prompt(tokenizer, messages))["input_ids"]


def check_window(
    tokenizer: PreTrainedTokenizerBase,
    context: list[dict[str, str]],
    context_name: str,
    rows: list[PromptRow],
    reply_tokens: int,
    window: int | None,
) -> None:
    """A DataError naming the context file and the first prompt row for which context + prompt + reply
    exceed the model's window (None: no limit)."""
    if window is None:
        return
    for row in rows:
        needed = len(prompt_ids(tokenizer, context + as_messages(row.prompt))) + reply_tokens
        if needed > window:
            alone = len(prompt_ids(tokenizer, context))
            raise DataError(
                f"{assets.resolve(context_name)}: field 'messages': the context ({alone} tokens) with the prompt of "
                f"{row.location} (field 'prompt') and {reply_tokens} reply tokens needs {needed} tokens, more than "
                f"the model's {window}-token window: shorten the context or use a model with a longer window"
            )
