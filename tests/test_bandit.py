"""The bandit tutorial: REINFORCE finds the best ad, a baseline cuts the gradient noise, a KL penalty keeps the
policy near its reference (at the optimum π_ref·exp(CTR/β)), and the plots are written."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.tutorials.bandit import (
    ADS,
    BETA,
    CTR,
    Run,
    advantages,
    kl_optimum,
    kl_to_reference,
    leave_one_out,
    main,
    train,
)

REFERENCE = torch.zeros(len(ADS))  # the uniform reference policy's logits


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bandit")
    return out, main(["--out", str(out)])


def kl(run: Run) -> float:
    return float(kl_to_reference(run.probs[-1].log(), REFERENCE))


def test_leave_one_out_is_the_mean_of_the_others():
    rewards = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    assert torch.allclose(leave_one_out(rewards), torch.tensor([[1 / 3], [2 / 3], [2 / 3], [1 / 3]]))


def test_advantages_are_the_lecture_reward_then_reward_minus_baseline_then_minus_beta_kl():
    clicks = torch.tensor([1.0, 0.0, 1.0])
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref_logp = torch.full((3,), -1.5)
    assert torch.equal(advantages(clicks, logp, ref_logp, baseline=False, beta=0.0), clicks)
    assert torch.allclose(advantages(clicks, logp, ref_logp, baseline=True, beta=0.0), torch.tensor([0.5, -1, 0.5]))
    shaped = clicks - 0.5 * (logp - ref_logp)  # R - β·k1 on the sampled ad
    expected = shaped - (shaped.sum() - shaped) / 2
    assert torch.allclose(advantages(clicks, logp, ref_logp, baseline=True, beta=0.5), expected, atol=1e-6)


def test_kl_to_reference_is_the_exact_kl():
    logits = torch.tensor([2.0, 0.0, -1.0, 0.5, 0.0])
    p, q = logits.softmax(-1), REFERENCE.softmax(-1)
    assert torch.allclose(kl_to_reference(logits, REFERENCE), (p * (p / q).log()).sum(), atol=1e-6)
    assert float(kl_to_reference(REFERENCE, REFERENCE)) == pytest.approx(0.0, abs=1e-7)


def test_plain_and_baseline_reinforce_find_the_best_ad(run_dir):
    runs = run_dir[1]
    assert runs["plain"].best > 0.9
    assert runs["baseline"].best > 0.9


def test_the_baseline_cuts_the_gradient_noise_on_every_seed():
    # Regret with 0/1 clicks is within noise of plain REINFORCE (the expected gradient is the same); the
    # per-step gradient variance is what a baseline lowers, and with rewards offset by 1 so is the regret.
    for seed in range(3):
        plain, baseline = train(False, 0.0, seed=seed), train(True, 0.0, seed=seed)
        assert baseline.noise.mean() < 0.9 * plain.noise.mean()
    plain, baseline = train(False, 0.0, offset=1.0), train(True, 0.0, offset=1.0)
    assert baseline.noise.mean() < 0.2 * plain.noise.mean()
    assert baseline.regret[-1] < plain.regret[-1]


def test_the_kl_penalty_keeps_the_policy_near_its_reference_at_the_regularised_optimum(run_dir):
    runs = run_dir[1]
    assert kl(runs["kl"]) < 0.5 * kl(runs["baseline"])
    assert runs["kl"].best < runs["baseline"].best
    # the maximiser of E_π[CTR] - β·KL(π‖π_ref), averaged over the last steps to smooth the sampling noise
    assert torch.allclose(runs["kl"].probs[-100:].mean(0), kl_optimum(BETA), atol=0.1)
    assert int(kl_optimum(BETA).argmax()) == int(CTR.argmax())


def test_the_plots_are_written(run_dir):
    out = run_dir[0]
    for name in ("regret.png", "policy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
