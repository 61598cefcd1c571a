"""`torchrun --nproc_per_node 2 -m rlhfkit sft` (DDP on gloo, CPU) matches one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from launch import assert_same_runs, run_stage

from rlhfkit import assets
from rlhfkit.config import ConfigError
from rlhfkit.training.runtime import check_launch, check_sharding


def run_sft(tmp_path: Path, model_dir: Path, name: str, processes: int, fsdp: bool = False) -> Path:
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
        "log_every": 1,
    }
    return run_stage("sft", settings, processes, fsdp)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    one = run_sft(tmp_path, tiny_model_dir, "one", 1)
    two = run_sft(tmp_path, tiny_model_dir, "two", 2)
    # the cosine schedule too: stepped once per optimizer step, not once per process
    assert_same_runs(one, two, tiny_model_dir, ("train/loss", "train/lr", "train/grad_norm", "eval/loss"))


def test_processes_that_did_not_join_one_group_are_refused():
    check_launch(2, 2)
    with pytest.raises(ConfigError, match=r"started 2 processes but accelerate joined 1.*torchrun"):
        check_launch(2, 1)  # e.g. a device without a distributed backend: two runs would write one output_dir


def test_fsdp_launch_that_accelerate_runs_as_ddp_is_refused(monkeypatch: pytest.MonkeyPatch):
    """accelerate 1.16 ignores an FSDP launch config without a GPU and would train with DDP: said instead."""
    cpu = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    check_sharding(cpu)  # no FSDP asked for
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP))
    with pytest.raises(ConfigError, match=r"FSDP was requested but accelerate set up MULTI_CPU.*ddp.yaml"):
        check_sharding(cpu)


@pytest.mark.slow
def test_accelerate_cpu_launch_of_several_processes_fails_before_writing(tmp_path: Path):
    """`accelerate launch --cpu --num_processes 2` starts a single process: said, instead of training alone."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "-m", "rlhfkit"]
    done = subprocess.run(
        [*command, "sft", "--set", f"output_dir={tmp_path / 'out'}"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "`accelerate launch --cpu --num_processes N` starts one process" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_process_fsdp_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` (FSDP2, each GPT-2 block its own shard
    group; on CPU through tests/fsdp_worker.py): the same losses and, gathered on rank 0, the same saved weights."""
    one = run_sft(tmp_path, tiny_model_dir, "one", 1)
    two = run_sft(tmp_path, tiny_model_dir, "two", 2, fsdp=True)
    assert_same_runs(one, two, tiny_model_dir, ("train/loss", "train/lr", "train/grad_norm", "eval/loss"))
