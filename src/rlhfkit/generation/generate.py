"""`rlhfkit generate`: sample responses to a file of prompts, written as JSONL training records."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field

from rlhfkit import assets
from rlhfkit.config import Config
from rlhfkit.data.records import load_records
from rlhfkit.generation.sampling import SamplingSettings, sample
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


def generate(config: GenerateConfig) -> Path:
    """Write one record per prompt to `config.output` and return its path."""
    torch.manual_seed(config.seed)
    prompts = [r.prompt for r in load_records(assets.resolve(config.prompts), "prompt")][: config.limit]
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, tokenizer).eval()
    repeated = [p for p in prompts for _ in range(config.num_samples)]
    texts: list[str] = []
    with progress_bar() as bar:
        task = bar.add_task("generate", total=len(repeated))
        for start in range(0, len(repeated), config.batch_size):
            batch = repeated[start : start + config.batch_size]
            texts += sample(model, tokenizer, batch, config.sampling).texts
            bar.update(task, advance=len(batch))
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as f:
        for i, prompt in enumerate(prompts):
            prompt_json = prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]
            replies = texts[i * config.num_samples : (i + 1) * config.num_samples]
            record = (
                {"prompt": prompt_json, "completion": replies[0]}
                if config.num_samples == 1
                else {"prompt": prompt_json, "responses": replies}
            )
            f.write(json.dumps(record) + "\n")
    return output
