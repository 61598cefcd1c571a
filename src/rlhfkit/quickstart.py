"""`rlhfkit quickstart`: the pipeline so far, offline, in minutes on a laptop CPU.

SFT of the embedded `tiny-austen` model on demonstrations of cheerful continuations of Austen sentence
openings, with samples for held-out openings printed before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table

from rlhfkit import assets
from rlhfkit.config import Config
from rlhfkit.data.records import load_records
from rlhfkit.generation.sampling import SamplingSettings, sample
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.sft.train import SFTConfig, sft

console = Console()


class QuickstartConfig(Config):
    """The quickstart run; every stage's settings can be changed with --set (e.g. sft.epochs=1)."""

    output_dir: str = Field("runs/quickstart", description="where every stage writes its outputs")
    prompts: str = Field("demo-prompts", description="held-out prompts for the samples")
    show: int = Field(6, ge=1, description="how many prompts to sample before and after")
    seed: int = Field(0, description="sampling seed (the same before and after)")
    sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(epochs=3, learning_rate=3e-4, warmup_steps=10, eval_every=0),
        description="the SFT stage",
    )
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(temperature=0.8), description="sampling for the samples shown"
    )


def samples_for(model_path: str, prompts: list[str], config: QuickstartConfig) -> list[str]:
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, tokenizer).eval()
    torch.manual_seed(config.seed)
    return sample(model, tokenizer, prompts, config.sampling).texts


def quickstart(config: QuickstartConfig) -> None:
    output_dir = Path(config.output_dir)
    sft_config = config.sft.model_copy(update={"output_dir": str(output_dir / "sft")})
    prompts = [r.prompt for r in load_records(assets.resolve(config.prompts), "prompt")][: config.show]
    console.rule(f"1/2 SFT of {sft_config.model} on {sft_config.data}")
    before = samples_for(sft_config.model, prompts, config)
    sft_dir = sft(sft_config)
    after = samples_for(str(sft_dir), prompts, config)
    console.rule("2/2 samples for held-out openings, before and after SFT")
    table = Table(show_lines=True)
    for column in ("prompt", f"{sft_config.model}", "after SFT"):
        table.add_column(column, overflow="fold")
    for row in zip(prompts, before, after, strict=True):
        table.add_row(*row)
    console.print(table)
    losses = [json.loads(line) for line in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in losses if "eval/loss" in m]
    console.print(
        f"held-out SFT loss: {evals[0]['eval/loss']:.3f} (step 0) -> {evals[-1]['eval/loss']:.3f} "
        f"(step {evals[-1]['step']}); model saved to {sft_dir}"
    )
