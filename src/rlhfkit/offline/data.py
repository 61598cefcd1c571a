"""The offline dataset: scored replies as token sequences (reply tokens and EOS trained) with their rewards.

Either `rewarded` records (prompt, response, reward) are read as they are, or, with reward sources given,
a file of candidates (prompt, responses: what `rlhfkit generate` writes with K > 1) is scored once, before
training: the reward model is then never queried again, which is the point of offline RL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from rlhfkit import assets
from rlhfkit.data.records import CandidatesRecord, RewardedRecord, SFTRecord, Text, load_records
from rlhfkit.data.tokenize import tokenize_sft
from rlhfkit.scoring.sources import CombinedReward, RewardSource
from rlhfkit.training.batching import TokenSequence


@dataclass(frozen=True)
class ScoredSequences:
    """Prompt + reply token sequences (the reply trained) and each reply's reward."""

    sequences: list[TokenSequence]
    rewards: torch.Tensor  # (N,) float

    @property
    def lengths(self) -> list[int]:
        return [len(s.input_ids) for s in self.sequences]


def score_candidates(path: str, sources: list[RewardSource], batch_size: int = 64) -> list[RewardedRecord]:
    """Every reply of every candidates record, scored by the weighted sum of `sources`."""
    records: list[CandidatesRecord] = load_records(assets.resolve(path), "candidates")  # type: ignore[assignment]
    pairs: list[tuple[Text, Text]] = [(r.prompt, reply) for r in records for reply in r.responses]
    reward = CombinedReward(sources, torch.device("cpu"))
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        prompts, replies = zip(*pairs[start : start + batch_size], strict=True)
        with torch.no_grad():
            scores += reward(list(prompts), list(replies))[0].tolist()  # type: ignore[arg-type]
    return [RewardedRecord(prompt=p, response=r, reward=s) for (p, r), s in zip(pairs, scores, strict=True)]


def load_scored(path: str, sources: list[RewardSource]) -> list[RewardedRecord]:
    """`rewarded` records from `path`, or, with `sources`, its candidates scored by them."""
    if sources:
        return score_candidates(path, sources)
    return load_records(assets.resolve(path), "rewarded")  # type: ignore[return-value]


def tokenize_scored(
    records: list[RewardedRecord], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> ScoredSequences:
    """Each record as an SFT example (prompt as context, reply + EOS trained) and its reward."""
    sequences = [
        tokenize_sft(tokenizer, SFTRecord(prompt=r.prompt, completion=r.response), max_length) for r in records
    ]
    return ScoredSequences(sequences, torch.tensor([r.reward for r in records], dtype=torch.float32))


def write_scored(records: list[RewardedRecord], path: Path) -> None:
    """The dataset as `rewarded` JSONL, so a run's data can be read again (e.g. by `rlhfkit offline` itself)."""
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r.model_dump(mode="json")) + "\n")
