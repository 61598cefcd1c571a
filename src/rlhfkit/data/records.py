"""Typed records for every kind of training data, in the shapes TRL uses, so datasets load unchanged.

Text is either plain text or a list of chat messages (TRL's "conversational" format). Columns a record
does not use are ignored (user datasets carry ids, sources, timestamps) and are not kept on the record.
A row that does not fit is reported as `{location}: field '{field}': {problem}`, one line per problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, cast, get_args, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from rlhfkit import assets
from rlhfkit.data.readers import DataError, read_rows

InstructGPTFlag = Literal[
    "fails_to_follow_instruction",
    "inappropriate_for_customer_assistant",
    "hallucination",
    "sexual_content",
    "violent_content",
    "encourages_violence_abuse_self_harm",
    "denigrates_protected_class",
    "harmful_advice",
    "expresses_opinion",
    "expresses_moral_judgment",
]
INSTRUCTGPT_FLAGS: tuple[str, ...] = get_args(InstructGPTFlag)
"""The metadata flags InstructGPT's labelers could attach to a rated reply (Ouyang et al. 2022, table 3)."""

_PREVIEW_CHARS = 60


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Message(_Model):
    """One chat turn; extra keys (name, tool_calls, ...) are ignored."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


def _text_tag(value: Any) -> str | None:
    return "str" if isinstance(value, str) else "list[Message]" if isinstance(value, list) else None


# Dispatching on the input's type (instead of trying both members) gives one error per problem, not one
# per union member; the tag names below show up in error paths and are removed when errors are formatted.
_TEXT_TAGS = ("str", "list[Message]")
Text = Annotated[
    Annotated[str, Tag(_TEXT_TAGS[0])] | Annotated[list[Message], Field(min_length=1), Tag(_TEXT_TAGS[1])],
    Discriminator(
        _text_tag,
        custom_error_type="text_type",
        custom_error_message="Input should be a string or a list of chat messages",
    ),
]


def _forms(value: Text | list[Text]) -> set[str]:
    """'text' and/or 'chat' for a Text or a list of Texts (a list of Messages is one chat Text)."""
    if isinstance(value, str):
        return {"text"}
    if all(isinstance(item, Message) for item in value):
        return {"chat"}
    return set().union(*(_forms(cast(Text, item)) for item in value))


class Record(_Model):
    """Base of the training records: all text fields are plain text, or all are chat messages.

    Mixing the two cannot be rendered: a chat template needs messages on both sides of the prompt.
    """

    _text_fields: ClassVar[tuple[str, ...]]
    if TYPE_CHECKING:  # every record type has a prompt (an SFT conversation's is None); pydantic must not see it
        prompt: Text | None

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        values = [getattr(self, name) for name in self._text_fields]
        present = [value for value in values if value is not None]
        if len(set().union(*map(_forms, present))) > 1:
            raise PydanticCustomError(
                "mixed_forms",
                "{fields} mix plain text and chat messages; use one or the other",
                {"fields": ", ".join(self._text_fields)},
            )
        return self


class PromptRecord(Record):
    """A prompt to sample replies for (other columns, such as an existing completion, are ignored)."""

    _text_fields = ("prompt",)
    prompt: Text


class SFTRecord(Record):
    """A demonstration: `prompt` + `completion` (text or messages), or one `messages` conversation."""

    _text_fields = ("prompt", "completion")
    prompt: Text | None = None
    completion: Text | None = None
    messages: list[Message] | None = None

    @field_validator("messages")
    @classmethod
    def _has_assistant_turn(cls, messages: list[Message] | None) -> list[Message] | None:
        if messages is not None and not any(message.role == "assistant" for message in messages):
            raise PydanticCustomError("no_assistant", "needs at least one assistant message to learn from")
        return messages

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        given = [name for name in ("prompt", "completion", "messages") if getattr(self, name) is not None]
        if given not in (["prompt", "completion"], ["messages"]):
            raise PydanticCustomError(
                "sft_shape",
                "expected either 'prompt' and 'completion', or 'messages'; got {given}",
                {"given": ", ".join(f"'{name}'" for name in given) or "none of them"},
            )
        return self


class PreferenceRecord(Record):
    """`chosen` is preferred to `rejected` as a reply to `prompt` (equally good when `tie`).

    TRL's implicit-prompt form is accepted too: no `prompt`, and `chosen`/`rejected` are whole
    conversations; their longest common prefix of messages becomes the prompt.
    """

    _text_fields = ("prompt", "chosen", "rejected")
    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    tie: bool = False

    @model_validator(mode="before")
    @classmethod
    def _split_implicit_prompt(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "prompt" in data:
            return data
        chosen, rejected = data.get("chosen"), data.get("rejected")
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            return data  # plain text without a prompt: reported as a missing 'prompt'
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0 or shared in (len(chosen), len(rejected)):
            raise PydanticCustomError(
                "implicit_prompt",
                "without 'prompt', 'chosen' and 'rejected' must start with the same messages (the prompt) "
                "and then differ; they share {shared} leading messages, of {chosen} and {rejected}",
                {"shared": shared, "chosen": len(chosen), "rejected": len(rejected)},
            )
        return {**data, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


class RankingRecord(Record):
    """K >= 2 replies to one prompt, ranked by a labeler: rank 1 is best, equal ranks are ties."""

    _text_fields = ("prompt", "responses")
    prompt: Text
    responses: list[Text] = Field(min_length=2)
    ranks: list[Annotated[int, Field(ge=1)]]

    @field_validator("ranks")
    @classmethod
    def _one_rank_per_response(cls, ranks: list[int], info: ValidationInfo) -> list[int]:
        responses = info.data.get("responses")  # absent when the responses were invalid: reported there
        if responses is not None and len(ranks) != len(responses):
            raise PydanticCustomError(
                "rank_count",
                "{ranks} ranks for {responses} responses; give one rank per response",
                {"ranks": len(ranks), "responses": len(responses)},
            )
        return ranks


class CandidatesRecord(Record):
    """K >= 2 sampled replies to one prompt, not yet judged: what `rlhfkit generate` writes with K > 1."""

    _text_fields = ("prompt", "responses")
    prompt: Text
    responses: list[Text] = Field(min_length=2)


class RatingRecord(Record):
    """One reply scored on InstructGPT's 1-7 Likert scale, with optional metadata flags."""

    _text_fields = ("prompt", "response")
    prompt: Text
    response: Text
    score: int = Field(ge=1, le=7)
    flags: list[InstructGPTFlag] = []


class ScoredRecord(Record):
    """One reply with a scalar reward (any scale: a reward model's score, a gold function's), as offline RL
    (`rlhfkit offline`) learns from."""

    _text_fields = ("prompt", "response")
    prompt: Text
    response: Text
    reward: float = Field(allow_inf_nan=False)


class UnpairedRecord(Record):
    """A single reply judged good (`label` true, thumbs up) or bad, as KTO trains on; 1/0 are accepted."""

    _text_fields = ("prompt", "completion")
    prompt: Text
    completion: Text
    label: bool


class EditRecord(Record):
    """A labeler's edit of a reply: `edited` is taken to be better than `original`."""

    _text_fields = ("prompt", "original", "edited")
    prompt: Text
    original: Text
    edited: Text


RECORD_TYPES: dict[str, type[Record]] = {
    "prompt": PromptRecord,
    "sft": SFTRecord,
    "preference": PreferenceRecord,
    "ranking": RankingRecord,
    "rating": RatingRecord,
    "unpaired": UnpairedRecord,
    "edit": EditRecord,
    "candidates": CandidatesRecord,
    "scored": ScoredRecord,
}


@overload
def load_records(path: str | os.PathLike[str], kind: Literal["prompt"]) -> list[PromptRecord]: ...
@overload
def load_records(path: str | os.PathLike[str], kind: Literal["sft"]) -> list[SFTRecord]: ...
@overload
def load_records(path: str | os.PathLike[str], kind: str) -> list[Record]: ...
def load_records(path: str | os.PathLike[str], kind: str) -> list[Any]:
    """Every row of a dataset file validated as `kind`; the first bad row raises DataError at its location."""
    model = _record_type(kind)
    records = [_validate(model, row.data, row.location) for row in read_rows(path)]
    if not records:
        raise DataError(f"{path}: no rows")
    return records


@overload
def validate_record(data: Mapping[str, Any], kind: Literal["sft"], location: str) -> SFTRecord: ...
@overload
def validate_record(data: Mapping[str, Any], kind: Literal["candidates"], location: str) -> CandidatesRecord: ...
@overload
def validate_record(data: Mapping[str, Any], kind: str, location: str) -> Record: ...
def validate_record(data: Mapping[str, Any], kind: str, location: str) -> Record:
    """One row validated as `kind`; errors are reported at `location` (a DataError)."""
    return _validate(_record_type(kind), data, location)


def _record_type(kind: str) -> type[Record]:
    if kind not in RECORD_TYPES:
        raise DataError(f"unknown record kind {kind!r}; expected one of: {', '.join(RECORD_TYPES)}")
    return RECORD_TYPES[kind]


def _validate(model: type[Record], data: Mapping[str, Any], location: str) -> Record:
    # Columnar formats (Parquet, Arrow) give every row every column, null where a row has no value,
    # so a null is read as an absent field: optional fields take their defaults, required ones are missing.
    present = {key: value for key, value in data.items() if value is not None}
    try:
        return model.model_validate(present)
    except ValidationError as error:
        raise DataError("\n".join(_describe(problem, location) for problem in error.errors())) from None


def _describe(problem: ErrorDetails, location: str) -> str:
    """`{location}: field '{field}': {problem}`, with the offending value unless it is the whole row."""
    field = _field_path(problem["loc"])
    if not field:
        return f"{location}: {problem['msg']}"
    value = "" if problem["type"] == "missing" else f" (got {_preview(problem['input'])})"
    return f"{location}: field '{field}': {problem['msg']}{value}"


def _field_path(loc: tuple[int | str, ...]) -> str:
    """`responses[1][0].content` from pydantic's ('responses', 1, 'list[Message]', 0, 'content')."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _TEXT_TAGS:
            path += f".{part}" if path else part
    return path


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."


def read_prompts(path: str, limit: int | None = None) -> list[Text]:
    """The prompts of a prompt-records file (or packaged asset), the first `limit` of them; none is an error."""
    records = load_records(assets.resolve(path), "prompt")
    if not records:
        raise DataError(f"{path}: no prompts")
    return [r.prompt for r in records][:limit]
