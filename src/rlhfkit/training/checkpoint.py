"""Checkpoints for --resume: accelerate's state (model, optimizer, scheduler, RNG) plus the step reached.

Written under a `.partial` name and renamed when complete, so a kill during a save never leaves a
checkpoint that a resume would trust.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

CHECKPOINT_PREFIX = "step-"


def list_checkpoints(output_dir: Path) -> list[Path]:
    found = (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")
    return sorted((p for p in found if (p / "trainer_state.json").exists()), key=lambda p: int(p.name[5:]))


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
    found = list_checkpoints(output_dir)
    if not found:
        accelerator.print(f"[resume] no checkpoint in {output_dir}/checkpoints: starting from step 0")
        return 0
    accelerator.load_state(str(found[-1]))
    step = json.loads((found[-1] / "trainer_state.json").read_text())["step"]
    accelerator.print(f"[resume] continuing from {found[-1]} (step {step})")
    return step
