"""`rlhfkit generate`: sample responses to a file of prompts, written as JSONL training records.

With `best_of: N` and `rewards`, each prompt gets N replies (rows of one batched generation, each from its
own seed) and keeps the one the reward scores highest (`generation.best_of`): a prompt/completion record
with its `score`, the SFT data of rejection sampling; `keep_all` adds every reply and its score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError
from rlhfkit.data.records import load_records, text_as_json
from rlhfkit.generation.best_of import Groups, sample_groups
from rlhfkit.generation.engine import ENGINE_HELP, EngineKind, rollout_engine
from rlhfkit.generation.sampling import SamplingSettings
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.scoring.sources import CombinedReward, RewardSource
from rlhfkit.training.progress import progress_bar


class GenerateConfig(Config):
    """Sample `num_samples` responses per prompt from a model."""

    model: str = Field("tiny-austen", description="model: default name, local path or hub id")
    prompts: str = Field("demo-prompts", description="file of records with a `prompt` field, or 'demo-prompts'")
    output: str = Field("runs/generate/samples.jsonl", description="JSONL: prompt/completion, or prompt/responses")
    num_samples: int = Field(1, ge=1, description="responses per prompt (K > 1 writes `responses` lists)")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    batch_size: int = Field(64, ge=1, description="prompts per generate call (best_of: N rows each)")
    seed: int = Field(0, description="sampling seed")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="sampling settings")
    engine: EngineKind = Field("hf", description=ENGINE_HELP)
    best_of: int | None = Field(
        None, ge=1, description="N: sample N replies per prompt, keep the one `rewards` scores highest (None: off)"
    )
    rewards: list[RewardSource] = Field(
        default_factory=list,
        validate_default=True,
        description="best_of's reward: [{source: DIR or function, weight, heads}], as PPO's",
    )
    keep_all: bool = Field(False, description="best_of: also write every reply (`responses`) and its `scores`")

    @field_validator("rewards")
    @classmethod
    def _rewards_with_best_of(cls, rewards: list[RewardSource], info: ValidationInfo) -> list[RewardSource]:
        if "best_of" not in info.data:  # best_of itself was invalid: reported there
            return rewards
        best_of = info.data["best_of"]
        if best_of is not None and not rewards:
            raise ValueError(
                f"best_of={best_of} needs a reward to choose by; e.g. rewards=[{{source: runs/reward}}] or "
                "[{source: vader}]"
            )
        if best_of is None and rewards:
            raise ValueError("rewards are only read with best_of: set best_of=N")
        return rewards

    @field_validator("best_of")
    @classmethod
    def _one_reply_per_prompt(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        if best_of is not None and info.data.get("num_samples", 1) > 1:
            raise ValueError("best_of keeps one reply per prompt: leave num_samples at 1 (keep_all writes all N)")
        return best_of


def sample_replies(
    model_name: str,
    prompts: list[Any],
    num_samples: int,
    batch_size: int,
    settings: SamplingSettings,
    engine_kind: EngineKind = "hf",
) -> list[list[str]]:
    """`num_samples` replies from `model_name` to each prompt, batched, with a progress bar."""
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, tokenizer).eval()
    engine = rollout_engine(engine_kind, model, model_name, tokenizer)
    repeated = [p for p in prompts for _ in range(num_samples)]
    texts: list[str] = []
    with progress_bar() as bar:
        task = bar.add_task(f"generate ({model_name})", total=len(repeated))
        for start in range(0, len(repeated), batch_size):
            batch = repeated[start : start + batch_size]
            texts += engine.sample(batch, settings).texts
            bar.update(task, advance=len(batch))
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def best_of_n(config: GenerateConfig, prompts: list[Any], n: int) -> Groups:
    """n replies per prompt, scored by `config.rewards`."""
    if config.engine != "hf":
        raise ConfigError(f"engine: best_of samples with engine hf (got {config.engine!r})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, tokenizer).to(device).eval()  # type: ignore[arg-type]  # transformers types `.to` as unbound
    reward = CombinedReward(config.rewards, torch.device(device))
    return sample_groups(model, tokenizer, prompts, n, reward, config.sampling, config.batch_size, config.seed)


def records(config: GenerateConfig, prompts: list[Any]) -> list[dict[str, Any]]:
    """One record per prompt: its completion, its K responses, or its best of N (with the scores)."""
    plain = [text_as_json(p) for p in prompts]
    if config.best_of is not None:
        groups = best_of_n(config, prompts, config.best_of)
        best, scores = groups.best(config.best_of)
        rows = [
            {"prompt": p, "completion": text, "score": score, "best_of": config.best_of}
            for p, text, score in zip(plain, best, scores.tolist(), strict=True)
        ]
        if config.keep_all:
            for row, texts, all_scores in zip(rows, groups.texts, groups.scores.tolist(), strict=True):
                row |= {"responses": texts, "scores": all_scores}
        return rows
    torch.manual_seed(config.seed)
    replies = sample_replies(
        config.model, prompts, config.num_samples, config.batch_size, config.sampling, config.engine
    )
    if config.num_samples == 1:
        return [{"prompt": p, "completion": texts[0]} for p, texts in zip(plain, replies, strict=True)]
    return [{"prompt": p, "responses": texts} for p, texts in zip(plain, replies, strict=True)]


def generate(config: GenerateConfig) -> Path:
    """Write one record per prompt to `config.output` and return its path."""
    prompts = [r.prompt for r in load_records(assets.resolve(config.prompts), "prompt")][: config.limit]
    rows = records(config, prompts)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return output
