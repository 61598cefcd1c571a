"""Request and response bodies of the JSON API. A body of the wrong shape (not JSON, not an object, a field
of the wrong type, an unknown field) is answered 422 with the field named, before anything is stored."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

RANK_FIELD = re.compile(r"rank_[0-9]{1,3}")
Text = Annotated[StrictStr, Field(max_length=100_000)]


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    password: Annotated[StrictStr, Field(min_length=1, max_length=1024)]


class LoginReply(BaseModel):
    user: str
    csrf: str


class JudgmentBody(BaseModel):
    """The fields of any task's form (each task reads its own; `rank_<slot>` for ranks): strings or whole
    numbers, flags a list of names."""

    model_config = ConfigDict(extra="allow")
    choice: Annotated[StrictStr, Field(max_length=32)] | None = None
    score: StrictInt | Annotated[StrictStr, Field(max_length=16)] | None = None
    flags: list[Annotated[StrictStr, Field(max_length=64)]] = Field(default_factory=list, max_length=16)
    edited: Text | None = None
    completion: Text | None = None

    @model_validator(mode="after")
    def _only_rank_fields_extra(self) -> JudgmentBody:
        for name, value in (self.model_extra or {}).items():
            if not RANK_FIELD.fullmatch(name):
                raise ValueError(f"field {name!r}: unknown (expected choice, score, flags, edited, completion, rank_N)")
            if isinstance(value, bool) or not isinstance(value, int | str) or len(str(value)) > 16:
                raise ValueError(f"field {name!r}: expected a whole number")
        return self

    def form(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class JudgmentReply(BaseModel):
    judgment: int
    created: bool


class ShownItem(BaseModel):
    id: int
    prompt: Any
    responses: list[Any]


class NextReply(BaseModel):
    item: ShownItem | None
