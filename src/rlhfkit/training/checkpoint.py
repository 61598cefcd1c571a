"""Checkpoints for --resume: accelerate's state (model, optimizer, scheduler, RNG) plus the step reached.

Written under a `.partial` name and renamed when complete, so a kill during a save never leaves a
checkpoint that a resume would trust: only `step-N` folders count, and `.partial` ones are a kill's leftovers,
deleted on resume.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from rlhfkit.config import UserError

CHECKPOINT_PREFIX = "step-"
_COMPLETE = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `step-N.partial` folder is not one, even with its state file)."""
    found = [
        path
        for path in (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")
        if _COMPLETE.fullmatch(path.name) and (path / "trainer_state.json").exists()
    ]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


class TrainingDiverged(UserError):
    """A loss became inf or nan: the run stopped, its last checkpoint is the last good state."""


def stop_if_diverged(accelerator: Accelerator, losses: dict[str, float], step: int, output_dir: Path) -> None:
    """Raise TrainingDiverged if a loss of this step is not finite, before anything else of the step is saved.

    The loss of step s is computed with the weights after step s - 1, so a checkpoint of step s - 1 holds the
    weights that diverged: it is deleted, and --resume would start from the one before. Losses only: an
    fp16 run's gradient norm is inf on the steps its loss scaler skips. The losses are global (all-reduced),
    so every process stops at the same step.
    """
    bad = [f"{name} = {value}" for name, value in losses.items() if not math.isfinite(value)]
    if not bad:
        return
    found = list_checkpoints(output_dir)
    good = [path for path in found if checkpoint_step(path) < step - 1]
    if accelerator.is_main_process:
        for path in found[len(good) :]:
            shutil.rmtree(path)
    kept = f"the last good checkpoint is {good[-1]}" if good else "no good checkpoint was saved before it (save_every)"
    raise TrainingDiverged(
        f"{output_dir}: step {step}: {', '.join(bad)}: the run diverged and stopped, no model saved; {kept}. "
        "Start afresh with --overwrite and e.g. a lower learning_rate"
    )


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Delete the half-written checkpoints a kill during a save left behind."""
    for partial in (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*.partial"):
        shutil.rmtree(partial)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    """accelerate state (model, optimizer, scheduler, RNG) plus the step, written then renamed."""
    final = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    partial = final.with_name(final.name + ".partial")
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps({"step": step}))
        partial.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resume(accelerator: Accelerator, output_dir: Path) -> int:
    """Load the last complete checkpoint; returns its step (0 when there is none)."""
    if accelerator.is_main_process:
        remove_partial_checkpoints(output_dir)
    found = list_checkpoints(output_dir)
    if not found:
        accelerator.print(f"[resume] no checkpoint in {output_dir}/checkpoints: starting from step 0")
        return 0
    accelerator.load_state(str(found[-1]))
    step = json.loads((found[-1] / "trainer_state.json").read_text())["step"]
    accelerator.print(f"[resume] continuing from {found[-1]} (step {step})")
    return step
