"""Typed records for every kind of training data, in the shapes TRL uses, so datasets load unchanged.

Text is either plain text or a list of chat messages (TRL's "conversational" format). Columns a record
does not use are ignored (user datasets carry ids, sources, timestamps) and are not kept on the record.
A row that does not fit is reported as `{location}: field '{field}': {problem}`, one line per problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, cast, get_args, overload

from pydantic import (
    AliasChoices,
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


def text_as_json(text: Text) -> str | list[dict[str, Any]]:
    """A text field as JSON data, as records hold it: a string, or the messages as dicts."""
    return text if isinstance(text, str) else [m.model_dump() for m in text]


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
    """A prompt to sample replies for, with the reference `answer` a checker compares replies to, if any
    (TRL's and GSM8K's `solution` is read as `answer`; other columns, such as a completion, are ignored)."""

    _text_fields = ("prompt",)
    prompt: Text
    answer: str | None = Field(None, validation_alias=AliasChoices("answer", "solution"))

    @field_validator("answer", mode="before")
    @classmethod
    def _number_as_text(cls, answer: Any) -> Any:
        """A numeric answer (`"answer": 42` in JSON) is kept as its text, as checkers compare text."""
        return str(answer) if isinstance(answer, int | float) and not isinstance(answer, bool) else answer


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


HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"  # Anthropic HH-RLHF transcript turn markers
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def is_transcript(text: str) -> bool:
    """Whether `text` is an HH-RLHF transcript: it starts with a Human turn (its leading blank line optional)."""
    return ("\n\n" + text.removeprefix("\n\n")).startswith(HUMAN)


def parse_transcript(text: str) -> list[dict[str, str]]:
    """The chat messages of an HH-RLHF transcript ("\\n\\nHuman: ... \\n\\nAssistant: ..."), turns stripped.

    Raises ValueError with the reason when it is not one: a turn that is not Human's first, or no
    Assistant turn last (the last reply is what a preference compares).
    """
    parts = _TURN.split("\n\n" + text.removeprefix("\n\n"))
    roles, contents = parts[1::2], parts[2::2]
    if parts[0] or not roles or roles[0] != "Human":
        raise ValueError("a transcript starts with a 'Human:' turn")
    if roles[-1] != "Assistant":
        raise ValueError(
            f"a transcript ends with an 'Assistant:' turn (the reply compared); its last of {len(roles)} turns "
            "is the Human's"
        )
    return [
        {"role": "user" if r == "Human" else "assistant", "content": c.strip()}
        for r, c in zip(roles, contents, strict=True)
    ]


def transcript_pair(
    chosen: str, rejected: str
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """(prompt, chosen, rejected) messages of two HH-RLHF transcripts: the shared conversation, then each final
    Assistant turn. Raises ValueError naming the field and the reason when they are malformed or diverge earlier."""
    turns = {}
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        try:
            turns[name] = parse_transcript(text)
        except ValueError as error:
            raise ValueError(f"field '{name}': not an HH-RLHF transcript: {error}") from None
    if turns["chosen"][:-1] != turns["rejected"][:-1]:
        raise ValueError(
            "fields 'chosen' and 'rejected': the two transcripts differ before their final Assistant turn; "
            "they must share the conversation and differ only in the last reply"
        )
    return turns["chosen"][:-1], turns["chosen"][-1:], turns["rejected"][-1:]


def shared_text_prompt(chosen: str, rejected: str) -> int:
    """Where the prompt of two full texts ends: at the last whitespace of their longest common prefix.

    The whitespace goes with the replies, as a BPE tokenizer attaches a word's leading space to the word
    (TRL's `extract_prompt` splits the same way): "Q: sky? A: blue" / "Q: sky? A: black" -> "Q: sky? A:".
    0 when there is no such whitespace (no prompt).
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    return max((i for i in range(shared) if chosen[i].isspace()), default=0)


def _implicit_prompt_problem(what: str, shared: str) -> PydanticCustomError:
    return PydanticCustomError(
        "implicit_prompt",
        "without 'prompt', 'chosen' and 'rejected' must start with the same {what} and then differ; "
        "they share {shared}",
        {"what": what, "shared": shared},
    )


class PreferenceRecord(Record):
    """`chosen` is preferred to `rejected` as a reply to `prompt` (equally good when `tie`).

    TRL's implicit-prompt forms are accepted too, with no `prompt`: whole conversations (their longest
    common prefix of messages is the prompt), whole texts (split at the last whitespace of their longest
    common prefix, `shared_text_prompt`), and Anthropic HH-RLHF transcripts (read as chat messages: the
    shared conversation is the prompt, each final Assistant turn a reply).
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
        if isinstance(chosen, str) and isinstance(rejected, str):
            if is_transcript(chosen) or is_transcript(rejected):
                try:
                    prompt, chosen, rejected = transcript_pair(chosen, rejected)
                except ValueError as error:
                    raise PydanticCustomError("transcript", str(error)) from None
                return {**data, "prompt": prompt, "chosen": chosen, "rejected": rejected}
            cut = shared_text_prompt(chosen, rejected)
            if cut == 0 or chosen == rejected:
                raise _implicit_prompt_problem(
                    "text (the prompt, up to a whitespace)",
                    "all their text" if chosen == rejected else "no text up to a whitespace",
                )
            return {**data, "prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            return data  # reported as a missing 'prompt' (or a bad 'chosen'/'rejected')
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0 or shared in (len(chosen), len(rejected)):
            raise _implicit_prompt_problem(
                "messages (the prompt)", f"{shared} leading messages, of {len(chosen)} and {len(rejected)}"
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


class ScoredReply(_Model):
    """One of a prompt's replies with its score (higher is better); UltraFeedback calls it `overall_score`."""

    response: Text
    score: float = Field(validation_alias=AliasChoices("score", "overall_score"))


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """Dense ranks, 1 for the highest score; equal scores share a rank (a tie): [7.5, 9, 7.5] -> [2, 1, 2]."""
    order = sorted(set(scores), reverse=True)
    return [order.index(score) + 1 for score in scores]


class ScoredRecord(Record):
    """UltraFeedback-style: K >= 2 replies to one prompt (`instruction` in UltraFeedback), each with a score;
    read as the ranking the scores give."""

    _text_fields = ("prompt", "responses")
    prompt: Text = Field(validation_alias=AliasChoices("prompt", "instruction"))
    completions: list[ScoredReply] = Field(min_length=2)

    @property
    def responses(self) -> list[Text]:
        return [reply.response for reply in self.completions]

    def ranking(self) -> RankingRecord:
        return RankingRecord(
            prompt=self.prompt,
            responses=self.responses,
            ranks=ranks_from_scores([reply.score for reply in self.completions]),
        )


class StepwiseRecord(Record):
    """TRL's stepwise supervision: a text reply as `completions` (its steps) with one correctness label per step."""

    _text_fields = ("prompt",)
    prompt: str
    completions: list[str] = Field(min_length=1)
    labels: list[bool]

    @field_validator("labels")
    @classmethod
    def _one_label_per_step(cls, labels: list[bool], info: ValidationInfo) -> list[bool]:
        steps = info.data.get("completions")
        if steps is not None and len(labels) != len(steps):
            raise PydanticCustomError(
                "label_count",
                "{labels} labels for {steps} steps; give one label per step",
                {"labels": len(labels), "steps": len(steps)},
            )
        return labels

    def outcome(self) -> UnpairedRecord:
        """The whole reply, its steps on lines of their own, judged good only if every step is: outcome
        supervision, which KTO and pairwise losses can train on (rlhfkit has no per-step reward model)."""
        reply = "".join("\n" + step for step in self.completions)
        return UnpairedRecord(prompt=self.prompt, completion=reply, label=all(self.labels))


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


class RewardedRecord(Record):
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
    "rewarded": RewardedRecord,
    "stepwise": StepwiseRecord,
}
KIND_FIELDS: dict[str, tuple[frozenset[str], ...]] = {
    "prompt": (frozenset({"prompt"}),),
    "sft": (frozenset({"messages"}), frozenset({"prompt", "completion"})),
    "preference": (frozenset({"chosen", "rejected"}),),
    "ranking": (frozenset({"responses", "ranks"}),),
    "rating": (frozenset({"response", "score"}),),
    "unpaired": (frozenset({"prompt", "completion", "label"}),),
    "edit": (frozenset({"original", "edited"}),),
    "candidates": (frozenset({"responses"}),),
    "scored": (frozenset({"completions"}),),
    "rewarded": (frozenset({"prompt", "response", "reward"}),),
    "stepwise": (frozenset({"completions", "labels"}),),
}
"""The fields that mark each kind's rows, for `infer_kind` (any one set of a kind's sets)."""


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


def infer_kind(fields: Collection[str], accepted: Sequence[str], location: str) -> str:
    """The one kind of `accepted` whose marking fields (KIND_FIELDS) a row with `fields` has.

    Where several match, the most specific wins (unpaired's completion + label beats SFT's prompt +
    completion; stepwise's completions + labels beats scored's completions); a tie or no match is a DataError.
    """
    present = set(fields)
    matched = {kind: max((len(s) for s in KIND_FIELDS[kind] if s <= present), default=0) for kind in accepted}
    best = [kind for kind, size in matched.items() if size and size == max(matched.values())]
    if len(best) == 1:
        return best[0]
    shapes = "; ".join(f"{kind}: {' or '.join('+'.join(sorted(s)) for s in KIND_FIELDS[kind])}" for kind in accepted)
    found = ", ".join(f"'{name}'" for name in fields) or "no fields"
    problem = f"fits {' and '.join(best)} alike" if best else "fits none of the shapes read here"
    raise DataError(f"{location}: a row with {found} {problem} ({shapes}); set the record kind in the config")


def load_feedback(path: str | os.PathLike[str], kind: str | None, accepted: Sequence[str]) -> tuple[str, list[Record]]:
    """(kind, records) of a feedback file: `kind`, or the kind its first row's fields show (`infer_kind`).

    The one loader of every shape a stage reads; a kind the stage cannot use is a DataError naming them.
    """
    if kind is None:
        first = next(read_rows(path), None)
        if first is None:
            raise DataError(f"{path}: no rows")
        present = [name for name, value in first.data.items() if value is not None]
        kind = infer_kind(present, accepted, first.location)
    elif kind not in accepted:
        raise DataError(f"{path}: {kind} records cannot be used here; this stage reads {', '.join(accepted)}")
    return kind, load_records(path, kind)


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


@dataclass(frozen=True)
class PromptSet:
    """The prompts of a file, their reference answers (None where a row has none) and each row's location."""

    prompts: list[Text]
    answers: list[str | None]
    locations: list[str]


def read_prompt_set(path: str, limit: int | None = None) -> PromptSet:
    """The first `limit` prompt records of a file (or packaged asset), with answers and locations."""
    rows = list(islice(read_rows(assets.resolve(path)), limit))
    if not rows:
        raise DataError(f"{path}: no prompts")
    records = [cast(PromptRecord, _validate(PromptRecord, row.data, row.location)) for row in rows]
    return PromptSet([r.prompt for r in records], [r.answer for r in records], [row.location for row in rows])


def read_prompts(path: str, limit: int | None = None) -> list[Text]:
    """The prompts of a prompt-records file (or packaged asset), the first `limit` of them; none is an error."""
    return read_prompt_set(path, limit).prompts
