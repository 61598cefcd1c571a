"""Reward-model ensembles, and `load_reward_model` for either kind of saved directory.

Christiano et al. 2017 (arXiv:1706.03741, section 2.2.3) fit "an ensemble of predictors, each trained
on |D| triples sampled from D with replacement", normalise each member independently and average them;
the spread of the members is their uncertainty, used to choose which comparisons to ask a human about
(section 2.2.4). An ensemble directory holds `ensemble.json` and one reward-model directory per member.
Each `member-N/` loads in `AutoModelForSequenceClassification` on its own (see `models/reward.py`); the
ensemble's reward, the mean of its members', has no single-checkpoint form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from torch import nn

from rlhfkit.data.records import Text
from rlhfkit.models.reward import CONFIG_FILE, HFRewardModel, RewardModel, RewardScores, combine, is_sequence_classifier

ENSEMBLE_FILE = "ensemble.json"


class RewardEnsemble(nn.Module):
    """N reward models with the same heads; rewards are their mean, `score().std` their spread."""

    def __init__(self, members: list[RewardModel]) -> None:
        super().__init__()
        if not members or any(m.head_names != members[0].head_names for m in members):
            raise ValueError("an ensemble needs at least one member, and all members need the same heads")
        self.members = nn.ModuleList(members)

    @property
    def models(self) -> list[RewardModel]:
        return cast(list[RewardModel], list(self.members))

    @property
    def head_names(self) -> list[str]:
        return self.models[0].head_names

    @property
    def weights(self) -> dict[str, float]:
        return self.models[0].weights

    def member_rewards(
        self, prompts: Sequence[Text], responses: Sequence[Text], normalized: bool = True
    ) -> torch.Tensor:
        """(M, N, H): every member's head rewards."""
        return torch.stack([m.rewards(prompts, responses, normalized) for m in self.models])

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text], normalized: bool = True) -> torch.Tensor:
        """(N, H): the members' mean head rewards."""
        return self.member_rewards(prompts, responses, normalized).mean(0)

    def score(
        self, prompts: Sequence[Text], responses: Sequence[Text], weights: dict[str, float] | None = None
    ) -> RewardScores:
        """Mean and standard deviation over members of Σ_h w_h·r_h (population std: 0 for one member)."""
        heads = self.member_rewards(prompts, responses)  # (M, N, H)
        per_member = torch.stack(
            [combine(h, self.head_names, self.weights if weights is None else weights) for h in heads]
        )  # (M, N)
        mean_heads = heads.mean(0)
        return RewardScores(
            reward=per_member.mean(0),
            std=per_member.std(0, correction=0),
            heads=dict(zip(self.head_names, mean_heads.T, strict=True)),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        for i, member in enumerate(self.models):
            member.save(path / member_dir_name(i))
        return write_index(path, len(self.members))

    @classmethod
    def load(cls, path: str | Path) -> RewardEnsemble:
        path = Path(path)
        names = json.loads((path / ENSEMBLE_FILE).read_text())["members"]
        return cls([RewardModel.load(path / name) for name in names]).eval()


def member_dir_name(index: int) -> str:
    return f"member-{index}"


def write_index(path: Path, members: int) -> Path:
    """`ensemble.json`, naming the member directories: what makes `path` load as an ensemble."""
    names = [member_dir_name(i) for i in range(members)]
    (path / ENSEMBLE_FILE).write_text(json.dumps({"members": names}, indent=2) + "\n")
    return path


REWARD_MODEL_FILES = (
    f"{ENSEMBLE_FILE} (an rlhfkit ensemble), {CONFIG_FILE} (an rlhfkit reward model) or a config.json naming a "
    "...ForSequenceClassification architecture (transformers, TRL's RewardTrainer)"
)


def is_reward_model(path: str | Path) -> bool:
    """Whether `load_reward_model` reads this path: an ensemble, an rlhfkit reward model, or any
    AutoModelForSequenceClassification directory."""
    path = Path(path)
    return (path / ENSEMBLE_FILE).is_file() or (path / CONFIG_FILE).is_file() or is_sequence_classifier(path)


def load_reward_model(path: str | Path, append_eos: bool = True) -> RewardModel | RewardEnsemble:
    """The reward model or ensemble saved in `path` (by `rlhfkit reward`), or any
    AutoModelForSequenceClassification directory (e.g. TRL's RewardTrainer output), read as an `HFRewardModel`
    with EOS appended to each text when `append_eos` (as TRL's RewardTrainer trains);
    `.score(prompts, responses)`."""
    path = Path(path)
    if not is_reward_model(path):
        raise FileNotFoundError(f"{path}: not a reward model directory: looked for {REWARD_MODEL_FILES}")
    if (path / ENSEMBLE_FILE).is_file() or (path / CONFIG_FILE).is_file():
        if not append_eos:
            raise ValueError(
                f"{path}: append_eos=false applies only to plain sequence-classification directories; "
                "rlhfkit reward models read the EOS they were trained with"
            )
        return RewardEnsemble.load(path) if (path / ENSEMBLE_FILE).is_file() else RewardModel.load(path)
    return HFRewardModel.load(path, append_eos)
