"""The PPO maths on hand-computed tensors: KL estimators, token rewards, GAE, whitening, the critic-free
estimators (GRPO, RLOO, REINFORCE++), DAPO's penalties, losses and their aggregation, controllers."""

import math

import pytest
import torch

from rlhfkit.ppo.advantages import (
    explained_variance,
    gae,
    grpo,
    informative_groups,
    kl_estimate,
    masked_moments,
    overlong_penalty,
    reinforce_pp,
    rloo,
    token_rewards,
    whiten,
)
from rlhfkit.ppo.controllers import KLController, RunningMoments
from rlhfkit.ppo.losses import (
    clipped_surrogate,
    clipped_value_loss,
    entropy,
    loss_normaliser,
    policy_gradient,
    sequence_log_ratio,
)


def close(actual: torch.Tensor, expected: list) -> bool:
    return torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-5)


def test_kl_estimators_on_one_token():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # log r = -log 2
    log2 = math.log(2)
    assert close(kl_estimate(logp, ref, "k1"), [log2])
    assert close(kl_estimate(logp, ref, "k2"), [log2**2 / 2])
    assert close(kl_estimate(logp, ref, "k3"), [(0.5 - 1) + log2])  # r - 1 - log r with r = 1/2


def test_kl_estimators_are_zero_when_the_policy_is_the_reference():
    logp = torch.tensor([-1.3, -0.2, -4.0])
    for estimator in ("k1", "k2", "k3"):
        assert torch.equal(kl_estimate(logp, logp.clone(), estimator), torch.zeros(3))


def test_k3_averages_to_the_true_kl():
    torch.manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    draws = torch.multinomial(p, 200_000, replacement=True)
    estimate = kl_estimate(p.log()[draws], q.log()[draws], "k3").mean()
    assert estimate.item() == pytest.approx((p * (p / q).log()).sum().item(), abs=5e-3)


def test_the_score_lands_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # the second response ended (EOS) at its first token
    rewards = token_rewards(torch.tensor([1.0, 2.0]), kl, beta=0.5, mask=mask)
    assert close(rewards, [[-0.05, -0.1, -0.15 + 1.0], [-0.25 + 2.0, 0.0, 0.0]])


def test_gae_with_a_terminal_last_token():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.4, 0.3]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # δ2 = 1 - 0.3 = 0.7; δ1 = 0.3 - 0.4 = -0.1, A1 = -0.1 + 0.5·0.7; δ0 = 0.4 - 0.5, A0 = -0.1 + 0.5·0.25
    assert close(advantages, [[0.025, 0.25, 0.7]])
    assert close(returns, [[0.525, 0.65, 1.0]])
    advantages, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=1.0)
    # δ2 = 0.7; δ1 = 0.5·0.3 - 0.4 = -0.25, A1 = -0.25 + 0.5·0.7; δ0 = 0.5·0.4 - 0.5, A0 = -0.3 + 0.5·0.1
    assert close(advantages, [[-0.25, 0.1, 0.7]])


def test_gae_bootstraps_a_cut_off_episode():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.4, 0.3]])
    advantages, _ = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5, bootstrap=torch.tensor([0.2]))
    # δ2 = 1 + 0.2 - 0.3 = 0.9; A1 = -0.1 + 0.45; A0 = -0.1 + 0.5·0.35
    assert close(advantages, [[0.075, 0.35, 0.9]])


def test_gae_ignores_padding_after_the_end():
    rewards = torch.tensor([[0.0, 1.0, 99.0], [0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 77.0], [0.5, 0.4, 0.3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0 ends at t=1 (terminal): δ1 = 1 - 0.4 = 0.6; δ0 = 0.4 - 0.5, A0 = -0.1 + 0.5·0.6
    assert close(advantages, [[0.2, 0.6, 0.0], [0.025, 0.25, 0.7]])
    assert close(returns, [[0.7, 1.0, 0.0], [0.525, 0.65, 1.0]])


def test_whitening_uses_only_the_real_tokens():
    values, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]])
    std = math.sqrt(2 / 3)  # population std of 1, 2, 3
    assert close(whiten(values, mask), [[-1 / std, 0.0, 1 / std, 0.0]])
    assert close(whiten(values, mask, shift_mean=False), [[-1 / std + 2, 2.0, 1 / std + 2, 0.0]])


def test_whitening_with_the_moments_of_the_whole_batch():
    values = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    mask = torch.ones(2, 2)
    shards = masked_moments(values[:1], mask[:1]) + masked_moments(values[1:], mask[1:])
    assert torch.allclose(whiten(values[:1], mask[:1], shards), whiten(values, mask)[:1])


def test_explained_variance_from_moments():
    returns, values = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 2.0])
    residual = returns - values  # 0, 0, 1: variance 2/9; returns' variance 2/3
    moments = [x.mean().item() for x in (returns, returns.square(), residual, residual.square())]
    assert explained_variance(*moments) == pytest.approx(1 - (2 / 9) / (2 / 3))


def test_clipped_surrogate_on_hand_values():
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.5])
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    loss, stats = clipped_surrogate((old + ratios.log()) - old, advantages, clip=0.2)
    # max(-A·ρ, -A·clip(ρ)): -1.2 (clip binds), -0.5, 1.1 (no clip needed), 0.8 (clip binds)
    assert close(loss, [-1.2, -0.5, 1.1, 0.8])
    assert close(stats["clipped"], [1.0, 0.0, 0.0, 1.0])
    assert stats["approx_kl"][0].item() == pytest.approx(0.5 - math.log(1.5), abs=1e-6)


def test_clip_higher_widens_only_the_upper_side():
    ratios, advantages = torch.tensor([1.3, 0.7, 1.3]), torch.tensor([1.0, -1.0, -1.0])
    loss, stats = clipped_surrogate(ratios.log(), advantages, clip=0.2, clip_high=0.28)
    # ρ 1.3, A > 0: clipped at 1.28 (not 1.2); ρ 0.7, A < 0: max(0.7, 0.8) = 0.8 (lower clip 0.2 binds);
    # ρ 1.3, A < 0: the unclipped 1.3 is the larger (pessimistic), whatever ε_high
    assert close(loss, [-1.28, 0.8, 1.3])
    assert close(stats["clipped"], [1.0, 1.0, 0.0])


def test_gspo_ratio_is_the_sequence_mean_with_per_token_gradients():
    log_ratio = torch.tensor([0.1, 0.3, -0.2, 0.0, 0.5], requires_grad=True)  # rows of 2 and 3 tokens
    lengths = torch.tensor([2, 3])
    sequence = sequence_log_ratio(log_ratio, lengths)
    assert close(sequence, [0.2, 0.2, 0.1, 0.1, 0.1])  # (0.1 + 0.3) / 2; (-0.2 + 0 + 0.5) / 3
    (sequence.exp() * torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])).sum().backward()
    # d s_i,t / d log ρ_j = s_i on its own token only: GSPO-token's sg[s_i]·∇log π(y_t)
    assert close(log_ratio.grad, [math.exp(0.2), 0.0, 0.0, math.exp(0.1), 0.0])
    _, stats = clipped_surrogate(sequence.detach(), torch.ones(5), clip=0.15)
    assert close(stats["clipped"], [1.0, 1.0, 0.0, 0.0, 0.0])  # e^0.2 > 1.15 clips all of row 0, e^0.1 none of row 1


def test_loss_aggregation_token_sequence_and_constant_means():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])  # row 0: 3 tokens, row 1: 1 token
    lengths = torch.tensor([3, 1])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()

    def aggregate(aggregation: str, rows: list[int]) -> tuple[float, float]:
        weights, items = loss_normaliser(lengths[rows], aggregation, max_length=4)
        return (per_token[rows] * weights[:, None])[mask[rows]].sum().item(), items

    expected = {"token_mean": 10 / 4, "sequence_mean": (6 / 3 + 4 / 1) / 2, "constant": 10 / (2 * 4)}
    for aggregation, value in expected.items():
        total, items = aggregate(aggregation, [0, 1])
        assert total / items == pytest.approx(value), aggregation
        # split over two processes or micro-batches, the sums and counts add up to the same mean
        (first, n0), (second, n1) = aggregate(aggregation, [0]), aggregate(aggregation, [1])
        assert (first + second) / (n0 + n1) == pytest.approx(value), aggregation


def test_the_ratio_is_one_and_the_gradient_is_the_policy_gradient_before_any_update():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    advantages = torch.tensor([0.5, -2.0])
    loss, stats = clipped_surrogate(logp - logp.detach().clone(), advantages, clip=0.2)
    loss.sum().backward()
    assert torch.equal(stats["ratio"], torch.ones(2))
    assert torch.allclose(logp.grad, -advantages)  # d(-A·ρ)/d log π = -A·ρ = -A at ρ = 1
    pg_loss, _ = policy_gradient(logp.detach(), advantages)
    assert close(pg_loss, [0.5, -4.0])


def test_clipped_value_loss_on_hand_values():
    values, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.6])
    loss, stats = clipped_value_loss(values, old, returns, clip=0.2)
    # row 0: (1-2)² = 1 vs V_clip 0.7: 1.69 -> ½·1.69; row 1: 0.36 vs V_clip 0.3: 0.09 -> ½·0.36
    assert close(loss, [0.845, 0.18])
    assert close(stats["clipped"], [1.0, 0.0])
    plain, _ = clipped_value_loss(values, old, returns, clip=None)
    assert close(plain, [0.5, 0.18])


def test_entropy_of_uniform_and_peaked_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    assert close(entropy(logits), [math.log(4), 0.0])


def test_adaptive_kl_controller_follows_ziegler():
    controller = KLController(0.1, target=6.0, horizon=10_000)
    controller.update(kl=9.0, episodes=64)  # error clip(9/6 - 1) = 0.2
    assert controller.beta == pytest.approx(0.1 * (1 + 0.2 * 64 / 10_000))
    controller.update(kl=6.6, episodes=64)  # error 0.1
    assert controller.beta == pytest.approx(0.1 * (1 + 0.2 * 64 / 10_000) * (1 + 0.1 * 64 / 10_000))
    restored = KLController(0.5, target=6.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.beta == controller.beta
    fixed = KLController(0.1)
    fixed.update(kl=100.0, episodes=64)
    assert fixed.beta == 0.1


def test_beta_falls_when_kl_is_below_target():
    controller = KLController(0.1, target=6.0, horizon=100)
    controller.update(kl=0.0, episodes=10)  # error clipped at -0.2
    assert controller.beta == pytest.approx(0.1 * (1 - 0.2 * 10 / 100))


def test_running_moments_merge_batches_like_the_whole_sample():
    torch.manual_seed(0)
    data = torch.randn(100) * 3 + 1
    moments = RunningMoments()
    for part in data.split([10, 40, 50]):
        moments.update(len(part), part.mean().item(), part.var(correction=0).item())
    assert moments.mean == pytest.approx(data.mean().item(), abs=1e-5)
    assert moments.std == pytest.approx(data.std(correction=0).item(), abs=1e-5)


def test_grpo_normalises_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # G = 4: two prompts
    std = math.sqrt(1 / 3)  # sample std of 1, 0, 0, 1 (mean 0.5: deviations ±0.5, Σ² = 1, / 3)
    a = 0.5 / (std + 1e-4)  # ε = 1e-4 by default; a group of equal rewards gets 0, not 0/0
    assert close(grpo(rewards, 4), [a, -a, -a, a, 0, 0, 0, 0])
    assert close(grpo(rewards, 4, scale=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])  # Dr.GRPO: no std
    assert close(grpo(torch.tensor([3.0, 1.0]), 2, eps=0.0), [1 / math.sqrt(2), -1 / math.sqrt(2)])


def test_rloo_baseline_leaves_each_sample_out():
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])  # G = 3
    # 1 - (2 + 6)/2 = -3; 2 - (1 + 6)/2 = -1.5; 6 - (1 + 2)/2 = 4.5; a group of equal rewards: 0
    assert close(rloo(rewards, 3), [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0])
    assert close(
        rloo(rewards, 3), (3 / 2 * (rewards.view(2, 3) - rewards.view(2, 3).mean(1, keepdim=True))).flatten().tolist()
    )


def test_reinforce_pp_normalises_returns_over_the_global_batch():
    rewards = torch.tensor([[-0.1, -0.1, 1.0], [-0.2, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = reinforce_pp(rewards, mask, gamma=1.0)
    assert close(returns, [[0.8, 0.9, 1.0], [1.8, 2.0, 0.0]])  # returns-to-go; nothing on padding
    real = torch.tensor([0.8, 0.9, 1.0, 1.8, 2.0])
    expected = (real - real.mean()) / real.std(correction=0)
    assert close(advantages[mask.bool()], expected.tolist()) and advantages[1, 2] == 0
    _, discounted = reinforce_pp(rewards, mask, gamma=0.5)
    assert close(discounted[0], [-0.1 - 0.05 + 0.25, -0.1 + 0.5, 1.0])
    # the moments of two shards, summed (as over processes), give the whole batch's normalisation
    whole = masked_moments(returns, mask)
    sharded, _ = reinforce_pp(rewards[:1], mask[:1], gamma=1.0, total=lambda local: whole)
    assert torch.allclose(sharded, advantages[:1], atol=1e-6)


def test_overlong_penalty_is_linear_over_the_buffer():
    lengths = torch.tensor([10, 12, 14, 16])
    # L_max 16, L_cache 4: free up to 12, then (12 - |y|) / 4
    assert close(overlong_penalty(lengths, max_length=16, buffer=4), [0.0, 0.0, -0.5, -1.0])


def test_dynamic_sampling_keeps_groups_with_different_scores():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert informative_groups(scores, 2).tolist() == [False, False, True, True, False, False]
