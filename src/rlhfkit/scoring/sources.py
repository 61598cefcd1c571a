"""The sequence score PPO maximises: a weighted sum of reward models and rule-based reward functions.

Each source is a saved reward model or ensemble (`rlhfkit reward` output; its heads are already
normalised to mean 0, std 1 on its training sample, and `heads` reweights them, e.g. helpful 1, harmless 2),
any AutoModelForSequenceClassification directory (TRL's RewardTrainer output; EOS appended as TRL trains,
`append_eos`), a function (prompt, response) -> float: `vader`, `length`, `format` or `python:module:function`,
or a checker (prompt, response, answer) -> float comparing the reply with the prompt's reference answer:
`correct` or a `python:module:function` of three parameters (`verifiable.py`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
from pydantic import Field

from rlhfkit.config import Config, ConfigError, UserError
from rlhfkit.data.readers import DataError
from rlhfkit.data.records import Text
from rlhfkit.models.reward_ensemble import REWARD_MODEL_FILES, is_reward_model, load_reward_model
from rlhfkit.scores import GOLD, gold_function
from rlhfkit.scoring.verifiable import CHECKS

Answers = Sequence[str | None]  # one reference answer per prompt, None where a prompt has none
Scorer = Callable[[Sequence[Text], Sequence[str], Answers], torch.Tensor]


class RewardSource(Config):
    """One term of the reward."""

    source: str = Field(
        description="reward-model directory (rlhfkit, or any AutoModelForSequenceClassification), "
        "or a function: vader, length, format, python:module:function, or a checker of the prompts' "
        "reference answers: correct, python:module:function(prompt, completion, answer)"
    )
    weight: float = Field(1.0, description="weight of this term in the sum")
    heads: dict[str, float] | None = Field(None, description="reward-model head weights (default: the saved ones)")
    append_eos: bool = Field(
        True,
        description="sequence-classification dirs: append EOS to prompt + response, as TRL's RewardTrainer "
        "trains (rlhfkit reward models always read their EOS)",
    )


def source_name(source: str) -> str:
    """A short name for the logs: the directory's name or the function's."""
    return Path(source).name if is_reward_model(source) else source.rsplit(":", 1)[-1]


class ScoringError(UserError):
    """A reward function or checker raised on one reply; `index` is the reply's place in the scored batch."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index

    def at(self, locations: Sequence[str]) -> UserError:
        """The same error, naming the row of the prompt file (`locations[index]`) the reply answered."""
        return UserError(f"{locations[self.index]}: {self}")


def takes_answer(function: Callable[..., float]) -> bool:
    """A function of three or more required positional parameters is a checker: (prompt, completion, answer)."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(function).parameters.values()
    return sum(p.kind in positional and p.default is p.empty for p in parameters) >= 3


def function_scorer(name: str, function: Callable[..., float]) -> Scorer:
    """Scores of a function or checker, one call per reply; an exception becomes a ScoringError."""
    checks = takes_answer(function)

    def score(prompts: Sequence[Text], responses: Sequence[str], answers: Answers) -> torch.Tensor:
        scores = []
        for index, (prompt, response, answer) in enumerate(zip(prompts, responses, answers, strict=True)):
            try:
                scores.append(float(function(prompt, response, answer) if checks else function(prompt, response)))
            except Exception as error:  # the user's code: any failure stops the run, naming the reply's prompt
                raise ScoringError(f"reward {name!r} raised {type(error).__name__}: {error}", index) from error
        return torch.tensor(scores)

    return score


def load_function(name: str) -> Callable[..., float]:
    """A built-in check (`correct`, `format`), a gold function, or `python:module:function`."""
    return CHECKS[name] if name in CHECKS else gold_function(name)


def load_scorer(source: RewardSource, device: torch.device) -> Scorer:
    """(prompts, responses, answers) -> (N,) float tensor for one source."""
    if is_reward_model(source.source):
        model = load_reward_model(source.source, source.append_eos).to(device)
        return lambda prompts, responses, answers: model.score(prompts, responses, source.heads).reward
    functions = [*GOLD, *CHECKS]
    if Path(source.source).exists() or (source.source not in functions and not source.source.startswith("python:")):
        found = "not a reward model directory" if Path(source.source).exists() else "no such directory or function"
        raise ConfigError(
            f"reward {source.source!r}: {found}; a reward model directory holds {REWARD_MODEL_FILES}, "
            f"and the functions are {', '.join(functions)}, python:module:function"
        )
    if source.heads is not None:
        raise ValueError(f"reward {source.source!r}: `heads` applies only to reward models")
    return function_scorer(source.source, load_function(source.source))


class CombinedReward:
    """Σ_i w_i·s_i(x, y) over the sources; `__call__` also gives each term, for the logs.

    `checkers` names the terms that compare replies with reference answers: the first one's mean is the
    accuracy the logs report."""

    def __init__(self, sources: list[RewardSource], device: torch.device) -> None:
        self.sources = sources
        self.scorers = [load_scorer(s, device) for s in sources]
        self.names = unique_names([source_name(s.source) for s in sources])
        self.checkers = [
            name
            for s, name in zip(sources, self.names, strict=True)
            if not is_reward_model(s.source) and takes_answer(load_function(s.source))
        ]

    def check_answers(self, answers: Answers, locations: Sequence[str]) -> None:
        """A checker needs every prompt's reference answer: the first row without one is an error."""
        if self.checkers and None in answers:
            location = locations[list(answers).index(None)]
            raise DataError(
                f"{location}: field 'answer': missing; the reward {', '.join(self.checkers)} "
                "checks every reply against its prompt's reference answer"
            )

    def __call__(
        self, prompts: Sequence[Text], responses: Sequence[str], answers: Answers | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(Σ_i w_i·s_i, {name: s_i}); `answers` (default: none) are the prompts' reference answers."""
        answers = [None] * len(prompts) if answers is None else answers
        terms = {
            name: score(prompts, responses, answers).float()
            for name, score in zip(self.names, self.scorers, strict=True)
        }
        total = sum(s.weight * terms[name] for s, name in zip(self.sources, self.names, strict=True))
        return cast(torch.Tensor, total), terms  # a sum of at least one tensor


def unique_names(names: list[str]) -> list[str]:
    """Names with a numeric suffix where two sources share one (two reward dirs both called `reward`)."""
    return [name if names.count(name) == 1 else f"{name}-{i}" for i, name in enumerate(names)]
