"""Process set-up shared by every command that trains: threads, accelerate, the resolved config on disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import Config, ConfigError, dump_config
from rlhfkit.models.loading import save_model
from rlhfkit.training.config import TrainSettings


def start_run(config: Config, settings: TrainSettings) -> Accelerator:
    """An Accelerator for this process (DDP under `accelerate launch`), with the config saved and echoed."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    set_seed(settings.seed)  # before any model is built: e.g. a new pad token's embedding row is random
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        # NextTokenLoss only sends trained positions through the output layer; all parameters still
        # take part, so DDP needs no unused-parameter search.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    if settings.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"batch_size {settings.batch_size} must be divisible by the {accelerator.num_processes} processes"
        )
    if accelerator.is_main_process:
        dump_config(config, Path(settings.output_dir) / "config.yaml")
        accelerator.print(f"config: {config.model_dump(mode='json')}")
    return accelerator


def finish_run(
    accelerator: Accelerator,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    summary: dict[str, float],
) -> Path:
    """Save the trained model (`save_pretrained`, LoRA merged) and `train_summary.json` from the main process."""
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), tokenizer, output_dir)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return output_dir
