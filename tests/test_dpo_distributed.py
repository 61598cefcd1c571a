"""`rlhfkit dpo` under `torchrun --nproc_per_node 2` (DDP on gloo, CPU) matches one process."""

import json
from pathlib import Path

import pytest
from launch import assert_same_runs, run_stage

from rlhfkit import assets


def run_dpo(tmp_path: Path, model_dir: Path, data: Path, name: str, processes: int, **extra: object) -> Path:
    settings = {
        "model": model_dir,
        "data": data,
        "output_dir": tmp_path / name,
        "ref_cache_dir": tmp_path / f"cache-{name}",
        "max_steps": 3,
        "batch_size": 8,
        "micro_batch_size": 2,  # two micro-batches per process per step: accumulation and no_sync
        "learning_rate": 3e-3,
        "eval_every": 0,
        "eval_fraction": 0.2,
        "num_threads": 1,
        **extra,
    }
    return run_stage("dpo", settings, processes)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    prompts = [json.loads(line)["prompt"] for line in Path(assets.resolve("demo-prompts")).read_text().splitlines()]
    replies = [" She was very happy.", " She was quite sad.", " He said nothing at all to anyone.", " Yes."]
    rows = [
        {"prompt": p, "chosen": replies[i % 4], "rejected": replies[(i + 1) % 4]} for i, p in enumerate(prompts[:40])
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = {"rpo_alpha": 0.5}  # RPO's NLL term too: both terms must be normalised over the global batch
    one = run_dpo(tmp_path, tiny_model_dir, data, "one", 1, **extra)
    two = run_dpo(tmp_path, tiny_model_dir, data, "two", 2, **extra)
    assert_same_runs(one, two, tiny_model_dir, ("dpo/loss", "dpo/accuracy", "train/lr", "eval/dpo/loss"))
