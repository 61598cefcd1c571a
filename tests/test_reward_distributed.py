"""`torchrun --nproc_per_node 2 -m rlhfkit reward` (DDP on gloo, CPU) matches one process with the same global batch."""

import json
import random
from pathlib import Path

import pytest
import torch
from launch import run_stage

from rlhfkit.reward import RewardModel


def run_reward(tmp_path: Path, model_dir: Path, data: Path, name: str, processes: int) -> Path:
    settings = {
        "model": model_dir,
        "heads.reward.data": data,
        "heads.reward.kind": "ranking",
        "output_dir": tmp_path / name,
        "max_steps": 3,
        "batch_size": 8,
        "micro_batch_size": 2,  # 2 micro-batches per process and step: accumulation under no_sync
        "learning_rate": 1e-3,
        "eval_fraction": 0.0,
        "normalize_samples": 0,
        "num_threads": 1,
        "log_every": 1,
    }
    return run_stage("reward", settings, processes)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    rng = random.Random(0)
    words = ["happy", "sad", "the", "walk", "garden", "letter", "cold", "bright"]
    rows = []
    for i in range(24):  # rankings of 2 to 4 replies, short and long: several length buckets per micro-batch
        k = 2 + i % 3
        replies = [" " + " ".join(rng.choices(words, k=rng.choice([1, 2, 30, 40]))) for _ in range(k)]
        rows.append({"prompt": f"Day {i}:", "responses": replies, "ranks": rng.sample(range(1, k + 1), k)})
    data = tmp_path / "rankings.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    one = RewardModel.load(run_reward(tmp_path, tiny_model_dir, data, "one", 1))
    two = RewardModel.load(run_reward(tmp_path, tiny_model_dir, data, "two", 2))
    torch.testing.assert_close(one.head.weight, two.head.weight, atol=1e-5, rtol=1e-4)
    for (name, p), q in zip(one.backbone.named_parameters(), two.backbone.parameters(), strict=True):
        # ln_f.bias adds the same to every reply's reward, so a ranking loss's gradient for it is rounding noise,
        # which Adam scales up to steps of either sign: it differs between any two summation orders
        if name != "ln_f.bias":
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
    log = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["rm/loss"] for m in single]
    assert [m["rm/loss"] for m in log] == pytest.approx(losses, rel=1e-4)  # the global batch's mean, gathered
    assert [m["train/lr"] for m in log] == pytest.approx([m["train/lr"] for m in single], rel=1e-6)  # once a step
    assert losses[0] != pytest.approx(losses[-1], rel=1e-3)  # and training moved the weights
