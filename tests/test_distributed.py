"""`accelerate launch --num_processes 2 --cpu` (DDP on gloo) matches one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit import assets


def run_sft(tmp_path: Path, model_dir: Path, name: str, processes: int) -> Path:
    out = tmp_path / name
    launcher = (
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--cpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "rlhfkit",
        ]
        if processes > 1
        else [sys.executable, "-m", "rlhfkit"]
    )
    settings = {
        "model": model_dir,
        "data": assets.resolve("demo-sft"),
        "output_dir": out,
        "max_steps": 4,
        "epochs": 1,
        "batch_size": 8,
        "micro_batch_size": 2,
        "learning_rate": 1e-3,
        "eval_every": 0,
        "eval_fraction": 0.05,
        "num_threads": 1,
    }
    command = [*launcher, "sft", *[arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    one = AutoModelForCausalLM.from_pretrained(run_sft(tmp_path, tiny_model_dir, "one", 1)).state_dict()
    two = AutoModelForCausalLM.from_pretrained(run_sft(tmp_path, tiny_model_dir, "two", 2)).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(one[key], start[key])  # training moved the weights
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
