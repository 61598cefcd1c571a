"""Run an `rlhfkit` stage in a subprocess, alone or under `accelerate launch` (DDP on gloo, CPU)."""

import os
import subprocess
import sys
from pathlib import Path


def run_stage(stage: str, settings: dict[str, object], processes: int) -> Path:
    """`rlhfkit STAGE --set key=value ...`; returns the stage's output_dir. Fails with the child's stderr."""
    accelerate = [
        *("-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes), "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
    ]
    launcher = [sys.executable, *(accelerate if processes > 1 else []), "-m", "rlhfkit", stage]
    command = [*launcher, *[arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(str(settings["output_dir"]))
