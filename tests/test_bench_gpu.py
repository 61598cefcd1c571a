"""bench/gpu.py, the prepared GPU benchmark, runs end to end with `--smoke` (a 2-layer model, bf16 autocast on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "bench" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_smoke_run_writes_every_stage(tmp_path: Path):
    command = [sys.executable, str(SCRIPT), "--smoke", "--output-dir", str(tmp_path), "--peak-tflops", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert set(record["stages"]) == {"sft", "reward", "dpo", "ppo", "generate"}
    for name, stage in record["stages"].items():
        assert stage["tokens_per_s"] > 0, name
    for name in ("sft", "reward", "dpo", "ppo"):  # MFU = achieved TFLOP/s over the given peak of 1
        assert record["stages"][name]["mfu"] == pytest.approx(record["stages"][name]["tflops"])
