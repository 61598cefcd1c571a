"""`rlhfkit ppo` and `rlhfkit grpo` under `torchrun --nproc_per_node 2` (DDP on gloo, CPU) match one process."""

from pathlib import Path

import pytest
from launch import assert_same_runs, run_stage


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    settings = {
        "model": tiny_model_dir,
        "prompts": "demo-prompts",
        "rewards": "[{source: length, weight: 0.1}]",
        "max_steps": 2,
        "batch_size": 8,
        "mini_batch_size": 4,  # each process holds 2 of a minibatch's 4 rows, or another share of them
        "micro_batch_size": 1,  # accumulation, no_sync, and a process without rows in a minibatch
        "ppo_epochs": 2,
        "learning_rate": 3e-3,
        "sampling": "{max_new_tokens: 6}",
        "whiten_advantages": True,
        "reward_norm": True,
        "kl_target": 1.0,
        "kl_horizon": 16,
        "ptx_coef": 0.5,
        "ptx_data": "austen",
        "ptx_batch_size": 4,
        "ptx_max_length": 16,
        "critic": "policy",
        "num_threads": 1,
        "log_samples": 0,
    }
    one = run_stage("ppo", {**settings, "output_dir": tmp_path / "one"}, 1)
    two = run_stage("ppo", {**settings, "output_dir": tmp_path / "two"}, 2)
    keys = ("reward/score", "kl/k1", "kl/beta", "ppo/policy_loss", "value/loss", "ptx/loss", "response/distinct2")
    keys += ("train/lr",)
    # The same responses, statistics and updates. Weights to 1e-4 of the 1.3e-2 that training moved them: a value
    # near the clip range's edge may fall on either side with another summation order, which moves the weights
    # ~1.7e-5 (as much as one process with micro_batch_size 2 instead of 1 does).
    assert_same_runs(one, two, tiny_model_dir, keys, atol=1e-4)


@pytest.mark.slow
def test_two_process_grpo_equals_one_process(tmp_path: Path, tiny_model_dir: Path):
    settings = {
        "model": tiny_model_dir,
        "prompts": "demo-prompts",
        "rewards": "[{source: length, weight: 0.1}]",  # words: some groups tie, and dynamic sampling drops them
        "max_steps": 2,
        "batch_size": 8,  # 4 prompts × G 2; a group's two rows fall on different processes
        "group_size": 2,
        "mini_batch_size": 4,
        "micro_batch_size": 1,
        "ppo_epochs": 2,
        "learning_rate": 3e-3,
        "sampling": "{max_new_tokens: 6}",
        "kl_target": 1.0,
        "kl_horizon": 16,
        "loss_aggregation": "sequence_mean",
        "dynamic_sampling": True,
        "num_threads": 1,
        "log_samples": 0,
    }
    one = run_stage("grpo", {**settings, "output_dir": tmp_path / "one"}, 1)
    two = run_stage("grpo", {**settings, "output_dir": tmp_path / "two"}, 2)
    keys = ("reward/score", "kl/k1", "kl/beta", "ppo/policy_loss", "ppo/kl_loss", "groups/dropped", "train/lr")
    assert_same_runs(one, two, tiny_model_dir, keys, atol=1e-4)
