"""`accelerate launch --num_processes 2 --cpu` (DDP on gloo) matches one process with the same global batch."""

from pathlib import Path

import pytest
import torch
from launch import run_stage
from transformers import AutoModelForCausalLM

from rlhfkit import assets


def run_sft(tmp_path: Path, model_dir: Path, name: str, processes: int) -> Path:
    settings = {
        "model": model_dir,
        "data": assets.resolve("demo-sft"),
        "output_dir": tmp_path / name,
        "max_steps": 4,
        "batch_size": 8,
        "micro_batch_size": 2,
        "learning_rate": 1e-3,
        "eval_every": 0,
        "eval_fraction": 0.05,
        "num_threads": 1,
    }
    return run_stage("sft", settings, processes)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    one = AutoModelForCausalLM.from_pretrained(run_sft(tmp_path, tiny_model_dir, "one", 1)).state_dict()
    two = AutoModelForCausalLM.from_pretrained(run_sft(tmp_path, tiny_model_dir, "two", 2)).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(one[key], start[key])  # training moved the weights
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
