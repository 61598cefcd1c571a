"""Run an `rlhfkit` stage in a subprocess, alone or under `accelerate launch` (DDP on gloo, CPU), and compare runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM


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


def assert_same_runs(one: Path, two: Path, start: Path, keys: tuple[str, ...]) -> None:
    """Two runs of a stage logged the same `keys` (where present) at the same steps, and saved the same weights,
    which differ from the `start` model's."""
    logs = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] for out in (one, two)]
    for a, b in zip(*logs, strict=True):  # whole-step metrics, gathered over processes
        assert a["step"] == b["step"]
        for key in keys:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    p1, p2, p0 = (AutoModelForCausalLM.from_pretrained(path).state_dict() for path in (one, two, start))
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(p1[key], p0[key])  # training moved the weights
    for name in p1:
        assert torch.allclose(p1[name], p2[name], atol=1e-5), name
