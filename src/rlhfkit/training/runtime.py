"""Process set-up shared by every command that trains: threads, accelerate, the resolved config on disk."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed

from rlhfkit.config import Config, dump_config
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
    if accelerator.is_main_process:
        dump_config(config, Path(settings.output_dir) / "config.yaml")
        accelerator.print(f"config: {config.model_dump(mode='json')}")
    return accelerator
