"""Run an `rlhfkit` stage in a subprocess, alone or under torchrun (DDP on gloo, CPU), and compare runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

FSDP_CONFIG = Path(__file__).parents[1] / "configs" / "accelerate" / "fsdp.yaml"


def launcher(processes: int, fsdp: bool) -> list[str]:
    """`python -m rlhfkit`, or the worker of `processes` under torchrun (DDP) or under
    `accelerate launch --config_file configs/accelerate/fsdp.yaml` (FSDP), as the README says."""
    here = Path(__file__).parent
    if fsdp:
        accelerate = ["-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG)]
        return [*accelerate, "--num_processes", str(processes), str(here / "fsdp_worker.py")]
    if processes > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        return [*torchrun, str(here / "ddp_worker.py")]
    return ["-m", "rlhfkit"]


def run_stage(stage: str, settings: dict[str, object], processes: int, fsdp: bool = False) -> Path:
    """`rlhfkit STAGE --set key=value ...` as `launcher` starts it; returns the stage's output_dir. Fails with
    the child's stderr, or if the processes did not form one group (of FSDP's type, with `fsdp`)."""
    output_dir = Path(str(settings["output_dir"]))
    ranks = output_dir.with_name(output_dir.name + "-ranks")
    worker = launcher(processes, fsdp)
    command = [sys.executable, *worker, stage, *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RLHFKIT_TEST_RANKS": str(ranks)}
    ranks.mkdir(parents=True)
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    if processes > 1:
        assert_one_group(ranks, processes, {"FSDP"} if fsdp else {"MULTI_CPU", "MULTI_GPU"})
    return output_dir


def assert_one_group(ranks: Path, processes: int, kinds: set[str]) -> None:
    """Each worker recorded that accelerate joined `processes` processes in one group of one of `kinds`
    (accelerate's distributed types), and their indices differ."""
    records = [json.loads(path.read_text()) for path in sorted(ranks.glob("rank-*.json"))]
    assert sorted(r["index"] for r in records) == list(range(processes)), records
    assert all(r["processes"] == processes and r["type"] in kinds for r in records), records


def assert_same_runs(one: Path, two: Path, start: Path, keys: tuple[str, ...], atol: float = 1e-5) -> None:
    """Two runs of a stage logged the same `keys` (where present) at the same steps, and saved the same weights
    (to `atol`), which differ from the `start` model's."""
    logs = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] for out in (one, two)]
    for key in keys:  # every key is checked somewhere
        assert any(key in a for a in logs[0]), key
    for a, b in zip(*logs, strict=True):  # whole-step metrics, gathered over processes
        assert a["step"] == b["step"]
        for key in keys:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    p1, p2, p0 = (AutoModelForCausalLM.from_pretrained(path).state_dict() for path in (one, two, start))
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(p1[key], p0[key])  # training moved the weights
    for name in p1:
        assert torch.allclose(p1[name], p2[name], atol=atol), name
