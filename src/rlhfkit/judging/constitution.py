"""The constitution: written principles that guide an AI labeler, read from YAML.

Constitutional AI (Bai et al. 2022, arXiv:2212.08073) gives each judgement one principle drawn at random
from the constitution, for critiques and revisions (section 3.1) and for comparisons (section 4.1), so
that the feedback averages over many phrasings. `principle_schedule` draws them, or cycles through them in
order so that every principle judges a balanced share (useful for per-principle agreement reports).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlhfkit import assets
from rlhfkit.config import ConfigError, format_validation_error

Order = Literal["sample", "cycle"]


class Principle(BaseModel):
    """One principle: its name and the three requests it is phrased as."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="short name, written into every label the principle produced")
    comparison: str = Field(min_length=1, description="question asked when choosing among replies")
    critique: str = Field(min_length=1, description="request to find what is wrong with a reply")
    revision: str = Field(min_length=1, description="request to rewrite the reply in the light of the critique")


class Constitution(BaseModel):
    """An ordered list of principles with distinct names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principles: list[Principle] = Field(min_length=1)

    def select(self, names: list[str] | None) -> list[Principle]:
        """The principles called `names` (all of them for None), in the order given; unknown names are errors."""
        if names is None:
            return list(self.principles)
        by_name = {p.name: p for p in self.principles}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"unknown principle(s) {', '.join(unknown)}; the constitution has: {', '.join(by_name)}")
        return [by_name[n] for n in names]


def load_constitution(name_or_path: str) -> Constitution:
    """Read a constitution from YAML (`constitution` is the packaged default); problems name the file."""
    path = Path(assets.resolve(name_or_path))
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: constitution file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(Constitution, error, str(path))) from None
    names = [p.name for p in constitution.principles]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: principle names must be distinct; got {', '.join(names)}")
    return constitution


def principle_schedule(principles: list[Principle], n: int, order: Order, seed: int) -> list[Principle]:
    """The principle for each of `n` judgements: drawn uniformly at random (Bai et al. 2022, sections 3.1 and
    4.1) with `order="sample"`, or round-robin with `order="cycle"`."""
    if order == "cycle":
        return [principles[i % len(principles)] for i in range(n)]
    rng = random.Random(seed)
    return [rng.choice(principles) for _ in range(n)]
