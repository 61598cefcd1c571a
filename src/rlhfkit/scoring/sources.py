"""The sequence score PPO maximises: a weighted sum of reward models and rule-based reward functions.

Each source is a saved reward model or ensemble (`rlhfkit reward` output; its heads are already
normalised to mean 0, std 1 on its training sample, and `heads` reweights them, e.g. helpful 1, harmless 2),
any AutoModelForSequenceClassification directory (TRL's RewardTrainer output; EOS appended as TRL trains,
`append_eos`), or a function (prompt, response) -> float: `vader`, `length` or `python:module:function`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
from pydantic import Field

from rlhfkit.config import Config, ConfigError
from rlhfkit.data.records import Text
from rlhfkit.models.reward_ensemble import REWARD_MODEL_FILES, is_reward_model, load_reward_model
from rlhfkit.scores import GOLD, gold_function

Scorer = Callable[[Sequence[Text], Sequence[str]], torch.Tensor]


class RewardSource(Config):
    """One term of the reward."""

    source: str = Field(
        description="reward-model directory (rlhfkit, or any AutoModelForSequenceClassification), "
        "or a function: vader, length, python:module:function"
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


def load_scorer(source: RewardSource, device: torch.device) -> Scorer:
    """(prompts, responses) -> (N,) float tensor for one source."""
    if is_reward_model(source.source):
        model = load_reward_model(source.source, source.append_eos).to(device)
        return lambda prompts, responses: model.score(prompts, responses, source.heads).reward
    if Path(source.source).exists() or (source.source not in GOLD and not source.source.startswith("python:")):
        found = "not a reward model directory" if Path(source.source).exists() else "no such directory or function"
        raise ConfigError(
            f"reward {source.source!r}: {found}; a reward model directory holds {REWARD_MODEL_FILES}, "
            f"and the functions are {', '.join(GOLD)}, python:module:function"
        )
    if source.heads is not None:
        raise ValueError(f"reward {source.source!r}: `heads` applies only to reward models")
    function = gold_function(source.source)
    return lambda prompts, responses: torch.tensor(
        [float(function(p, r)) for p, r in zip(prompts, responses, strict=True)]
    )


class CombinedReward:
    """Σ_i w_i·s_i(x, y) over the sources; `__call__` also gives each term, for the logs."""

    def __init__(self, sources: list[RewardSource], device: torch.device) -> None:
        self.sources = sources
        self.scorers = [load_scorer(s, device) for s in sources]
        self.names = unique_names([source_name(s.source) for s in sources])

    def __call__(
        self, prompts: Sequence[Text], responses: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {name: score(prompts, responses).float() for name, score in zip(self.names, self.scorers, strict=True)}
        total = sum(s.weight * terms[name] for s, name in zip(self.sources, self.names, strict=True))
        return cast(torch.Tensor, total), terms  # a sum of at least one tensor


def unique_names(names: list[str]) -> list[str]:
    """Names with a numeric suffix where two sources share one (two reward dirs both called `reward`)."""
    return [name if names.count(name) == 1 else f"{name}-{i}" for i, name in enumerate(names)]
