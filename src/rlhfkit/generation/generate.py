"""`rlhfkit generate`: sample responses to a file of prompts, written as JSONL training records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from rlhfkit import assets
from rlhfkit.config import Config
from rlhfkit.data.records import load_records
from rlhfkit.generation.engine import ENGINE_HELP, EngineKind, rollout_engine
from rlhfkit.generation.sampling import SamplingSettings
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.training.progress import progress_bar


class GenerateConfig(Config):
    """Sample `num_samples` responses per prompt from a model."""

    model: str = Field("tiny-austen", description="model: default name, local path or hub id")
    prompts: str = Field("demo-prompts", description="file of records with a `prompt` field, or 'demo-prompts'")
    output: str = Field("runs/generate/samples.jsonl", description="JSONL: prompt/completion, or prompt/responses")
    num_samples: int = Field(1, ge=1, description="responses per prompt (K > 1 writes `responses` lists)")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    batch_size: int = Field(64, ge=1, description="prompts per generate call")
    seed: int = Field(0, description="sampling seed")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="sampling settings")
    engine: EngineKind = Field("hf", description=ENGINE_HELP)


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


def generate(config: GenerateConfig) -> Path:
    """Write one record per prompt to `config.output` and return its path."""
    torch.manual_seed(config.seed)
    prompts = [r.prompt for r in load_records(assets.resolve(config.prompts), "prompt")][: config.limit]
    replies = sample_replies(
        config.model, prompts, config.num_samples, config.batch_size, config.sampling, config.engine
    )
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as f:
        for prompt, texts in zip(prompts, replies, strict=True):
            prompt_json = prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]
            record = (
                {"prompt": prompt_json, "completion": texts[0]}
                if config.num_samples == 1
                else {"prompt": prompt_json, "responses": texts}
            )
            f.write(json.dumps(record) + "\n")
    return output
