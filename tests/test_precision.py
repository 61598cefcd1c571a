"""Mixed precision (`mixed_precision: bf16`, autocast through accelerate) on CPU: a bf16 SFT run follows the fp32
one, and the maths that must stay float32 (log-probabilities, hence PPO ratios and KL; reward and value heads) does."""

import math
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from test_sft import metrics, small_sft_config
from torch import nn

from rlhfkit.models.reward import RewardModel
from rlhfkit.ops import fp32_linear, token_logprobs
from rlhfkit.sft.train import sft


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one precision per process: each run here sets its own, and leaves none behind."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def train_losses(tmp_path: Path, model_dir: Path, precision: str) -> list[float]:
    AcceleratorState._reset_state(reset_partial_state=True)
    config = small_sft_config(tmp_path / precision, model_dir, max_steps=4, mixed_precision=precision)
    return [m["train/loss"] for m in metrics(sft(config)) if "train/loss" in m]


@pytest.mark.slow
def test_bf16_sft_follows_fp32(tmp_path: Path, tiny_model_dir: Path, fresh_accelerate_state):
    fp32 = train_losses(tmp_path, tiny_model_dir, "no")
    bf16 = train_losses(tmp_path, tiny_model_dir, "bf16")
    assert len(bf16) == len(fp32) == 4
    assert bf16 == pytest.approx(fp32, rel=1e-2)  # bf16 keeps ~3 significant digits per matmul
    assert bf16 != fp32  # autocast did run: the losses are not the fp32 ones
    assert all(math.isfinite(x) for x in bf16)


def test_token_logprobs_are_float32_under_autocast():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 50).bfloat16() * 8, torch.randint(0, 50, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = token_logprobs(logits, targets, temperature=0.7)
    expected = torch.log_softmax(logits.double() / 0.7, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)


def test_fp32_linear_ignores_autocast():
    torch.manual_seed(0)
    layer, x = nn.Linear(64, 2), torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, kept = layer(x), fp32_linear(layer, x)
    assert low.dtype == torch.bfloat16 and kept.dtype == torch.float32
    torch.testing.assert_close(kept, layer(x), rtol=1e-6, atol=1e-6)


def test_reward_heads_are_float32_under_autocast(tiny_model_dir: Path):
    model = RewardModel.from_pretrained(str(tiny_model_dir), ["helpful", "harmless"]).eval()
    ids, mask = model.collate([model.encode("Emma was", " very happy."), model.encode("Mr. Knightley", " smiled.")])
    with torch.no_grad():
        fp32 = model(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(ids, mask)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)  # the backbone ran in bf16, the head did not


def test_mixed_precision_no_is_read_as_written(tmp_path: Path, tiny_model_dir: Path):
    """`--set mixed_precision=no` and `mixed_precision: no` in YAML, which YAML reads as false."""
    assert small_sft_config(tmp_path, tiny_model_dir, mixed_precision="no").mixed_precision == "no"
