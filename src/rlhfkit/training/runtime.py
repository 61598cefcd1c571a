"""Process set-up shared by every command that trains: threads, accelerate, the resolved config on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import Config, ConfigError, dump_config
from rlhfkit.models.loading import save_model
from rlhfkit.training.config import TrainSettings

LAUNCH_HELP = "launch several processes with `torchrun --standalone --nproc_per_node N -m rlhfkit STAGE ...`"


def launched_processes() -> int:
    """How many processes the launcher started (torchrun and MPI say so in the environment; 1 otherwise)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def check_launch(launched: int, joined: int) -> None:
    """Fail before any output is written unless every launched process joined one process group: otherwise
    each would train alone and write the same output_dir."""
    if launched != joined:
        raise ConfigError(
            f"the launcher started {launched} processes but accelerate joined {joined}, "
            f"so each would train alone: {LAUNCH_HELP}"
        )
    # `accelerate launch --cpu --num_processes N` (N > 1) runs a single process, with only MASTER_ADDR to show N
    if launched == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ:
        raise ConfigError(f"`accelerate launch --cpu --num_processes N` starts one process: {LAUNCH_HELP}")


def start_run(config: Config, settings: TrainSettings) -> Accelerator:
    """An Accelerator for this process (DDP under torchrun), with the config saved and echoed."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    set_seed(settings.seed)  # before any model is built: e.g. a new pad token's embedding row is random
    launched = launched_processes()
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        # Without a GPU, accelerate would leave torchrun's processes unconnected; gloo joins them on CPU.
        cpu=launched > 1 and not torch.accelerator.is_available(),
        # The prepared scheduler would otherwise step once per process at each optimizer step.
        step_scheduler_with_optimizer=False,
        # NextTokenLoss only sends trained positions through the output layer; all parameters still
        # take part, so DDP needs no unused-parameter search.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    check_launch(launched, accelerator.num_processes)
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
