"""Process set-up shared by every command that trains: threads, accelerate, the output directory, and the
resolved config on disk.

The output directory of a run holds one run. A fresh run (no --resume) refuses a directory that holds a
run already (a metrics.jsonl or checkpoints/, in it or in a member-* folder), unless `overwrite` clears it
first. A resumed run compares its config with the saved config.yaml: fields that change what the run
computes must match; those in RESUMABLE_CHANGES (how long it runs, how often it logs, evaluates and saves)
may differ, and are listed. config.yaml is written once those checks pass, so a refused run leaves the old
one in place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import Config, ConfigError, dump_config
from rlhfkit.models.loading import save_model
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.trackers import check_trackers

LAUNCH_HELP = "launch several processes with `torchrun --standalone --nproc_per_node N -m rlhfkit STAGE ...`"
FSDP_HELP = "launch with configs/accelerate/ddp.yaml, or torchrun, for DDP"


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


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def check_sharding(accelerator: Accelerator) -> None:
    """Fail before any output is written if FSDP was asked for but accelerate did not select it.

    accelerate 1.16 selects FSDP only for accelerator devices (AcceleratorState reads ACCELERATE_USE_FSDP in
    its multi-GPU branch, never in the multi-CPU one), so an FSDP launch without a GPU would silently run DDP.
    """
    if fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP:
        raise ConfigError(
            f"FSDP was requested but accelerate set up {accelerator.distributed_type.value}: accelerate runs FSDP "
            f"on GPUs only (without a GPU it would silently train with DDP); {FSDP_HELP}"
        )


RUN_MARKERS = ("metrics.jsonl", "checkpoints")  # what a run that began training leaves in its output_dir
RESUMABLE_CHANGES = frozenset(
    {"resume", "overwrite", "max_steps", "epochs", "eval_every", "save_every", "keep_checkpoints", "log_every",
     "log_samples", "num_threads", "report_to"}
)  # fmt: skip


def run_markers(output_dir: Path) -> list[str]:
    """The signs of an earlier run in `output_dir` (an ensemble's members have theirs one level down)."""
    found = [*output_dir.glob("*"), *output_dir.glob("*/*")] if output_dir.is_dir() else []
    return sorted(str(p.relative_to(output_dir)) for p in found if p.name in RUN_MARKERS)


def clear_output_dir(output_dir: Path) -> None:
    """Delete everything in `output_dir`."""
    for child in output_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config values as {dotted.name: value}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (saved value, current value)} of every field that differs (missing: None)."""
    old, new = flatten(saved), flatten(current)
    keys = sorted(old.keys() | new.keys())
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def check_resume(config: Config, saved_file: Path) -> list[str]:
    """The allowed changes from the saved config, one line each; a ConfigError naming the others, if any."""
    if not saved_file.exists():
        return []
    changes = config_changes(yaml.safe_load(saved_file.read_text()) or {}, config.model_dump(mode="json"))
    lines = {key: f"{key}: {old!r} (saved) -> {new!r}" for key, (old, new) in changes.items()}
    blocking = [line for key, line in lines.items() if key not in RESUMABLE_CHANGES]
    if blocking:
        raise ConfigError(
            f"{saved_file}: --resume with a config that changes the run ({'; '.join(blocking)}): resume with the "
            "saved values, or start afresh with --overwrite"
        )
    return [line for key, line in lines.items() if key not in ("resume", "overwrite")]


def prepare_output_dir(config: Config, settings: TrainSettings, accelerator: Accelerator) -> None:
    """Refuse, clear or check `output_dir` as the module docstring says, then write config.yaml."""
    output_dir = Path(settings.output_dir)
    found = run_markers(output_dir)  # every process decides alike, so all raise or none do
    if settings.resume:
        for line in check_resume(config, output_dir / "config.yaml"):
            accelerator.print(f"[resume] changed: {line}")
    elif found and not settings.overwrite:
        raise ConfigError(
            f"output_dir {output_dir} holds a run ({', '.join(found)}): continue it with --resume, "
            "or start afresh with --overwrite (deletes its contents)"
        )
    elif found and Path.cwd().resolve().is_relative_to(output_dir.resolve()):
        raise ConfigError(f"overwrite: output_dir {output_dir} contains the current directory; it is not deleted")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if found and settings.overwrite:
            clear_output_dir(output_dir)
            accelerator.print(f"overwrite: cleared {output_dir}")
        dump_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()


def start_run(config: Config, settings: TrainSettings) -> Accelerator:
    """An Accelerator for this process (DDP under torchrun), with the config saved and echoed."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    set_seed(settings.seed)  # before any model is built: e.g. a new pad token's embedding row is random
    check_trackers(settings.report_to)
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
    check_sharding(accelerator)
    if settings.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"batch_size {settings.batch_size} must be divisible by the {accelerator.num_processes} processes"
        )
    prepare_output_dir(config, settings, accelerator)
    accelerator.print(f"config: {config.model_dump(mode='json')}")
    return accelerator


def pretrained_saver(
    accelerator: Accelerator, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> Callable[[Path], None]:
    """Saves the trained model with `save_pretrained` (LoRA merged) and its tokenizer.

    Build it on every process: under FSDP (and DeepSpeed) this gathers the full weights from the shards onto
    the main process (a collective), which then saves them.
    """
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    weights = accelerator.get_state_dict(model) if sharded else None
    return lambda output_dir: save_model(accelerator.unwrap_model(model), tokenizer, output_dir, weights)


def finish_run(
    accelerator: Accelerator, output_dir: Path, summary: dict[str, float], save: Callable[[Path], None]
) -> Path:
    """Save the trained model (`save(output_dir)`) and `train_summary.json` from the main process."""
    if accelerator.is_main_process:
        save(output_dir)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return output_dir
