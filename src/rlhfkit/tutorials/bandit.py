"""The RLHF lecture's multi-armed bandit, runnable: `python -m rlhfkit.tutorials.bandit [--out DIR]`.

An ad server shows one of N ads per impression; ad a is clicked with probability CTR[a] (reward 1, else 0).
A softmax policy over the ads learns from clicks with REINFORCE, "Loss = -log π(a)·R", three ways:

    plain     A = R                                     the lecture's loss as written
    baseline  A = R - (mean R of the other impressions)  same gradient on average, less noise
    kl        the baseline, with R - β·KL(π‖π_ref)       what PPO does to a language model

The rewards, KL and advantages go through the PPO stage's own functions (`kl_estimate`, `token_rewards`,
`gae`): a bandit is an LM whose response is one token, so each impression is a (1, 1) "sequence".
Walk-through: docs/bandit.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.ppo.advantages import gae, kl_estimate, token_rewards

ADS = ("shoes", "phone", "sofa", "tent", "bike")
CTR = torch.tensor([0.10, 0.25, 0.15, 0.40, 0.30])  # click-through rate of each ad: the unknown reward means
BETA = 0.1  # the KL coefficient of the third variant
VARIANTS = {"plain": (False, 0.0), "baseline": (True, 0.0), "kl": (True, BETA)}  # name: (baseline?, β)


@dataclass(frozen=True)
class Run:
    probs: torch.Tensor  # (steps + 1, ads): the policy before the first step and after each
    regret: torch.Tensor  # (steps,): cumulative expected regret per impression, Σ_t (max CTR - π_t·CTR)
    noise: torch.Tensor  # (steps,): the gradient noise of each step (see `gradient_noise`)

    @property
    def best(self) -> float:
        """Probability of the best ad at the end."""
        return float(self.probs[-1, CTR.argmax()])


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(π‖π_ref) = Σ_a π(a)·k1(a): the k1 estimator averaged over every ad instead of sampled."""
    logp, ref_logp = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    return (logp.exp() * kl_estimate(logp, ref_logp, "k1")).sum(-1)


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """Each impression's baseline: the mean reward of the others in the batch (RLOO). It does not depend on
    that impression's own action, so it leaves the expected gradient unchanged and only removes noise."""
    n = rewards.shape[0]
    return (rewards.sum(0, keepdim=True) - rewards) / (n - 1)


def kl_optimum(beta: float) -> torch.Tensor:
    """The policy that maximises E_π[CTR] - β·KL(π‖π_ref): π* ∝ π_ref·exp(CTR/β) (uniform π_ref here)."""
    return (CTR / beta).softmax(-1)


def advantages(
    rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, baseline: bool, beta: float
) -> torch.Tensor:
    """(B,) advantages of B impressions, built as the PPO stage builds them for B one-token responses."""
    mask = torch.ones(len(rewards), 1)
    # r = R - β·k1: the sampled KL is part of the reward, not a loss term, exactly as in `rlhfkit ppo`
    kl = kl_estimate(logp, ref_logp, "k1")[:, None]
    rewards = token_rewards(rewards, kl, beta, mask)
    # GAE with γ = λ = 1 on one step is A = r - V: the value "critic" here is the leave-one-out baseline
    values = leave_one_out(rewards) if baseline else torch.zeros_like(rewards)
    return gae(rewards, values, mask, gamma=1.0, lam=1.0)[0][:, 0]


def gradient_noise(ads: torch.Tensor, adv: torch.Tensor, probs: torch.Tensor) -> float:
    """Σ of the variances, over the impressions, of their own gradients -A·(onehot(a) - π) (the gradient of
    log π(a) w.r.t. the logits is onehot(a) - π): the noise in each step that a baseline is there to cut."""
    grads = -adv[:, None] * (torch.nn.functional.one_hot(ads, len(probs)) - probs)
    return float(grads.var(0).sum())


def train(
    baseline: bool, beta: float, steps: int = 300, batch: int = 32, lr: float = 1.0, seed: int = 0, offset: float = 0.0
) -> Run:
    """REINFORCE on the logits of a softmax policy, starting from (and penalised towards) the uniform one.
    The reward is click + `offset`: an offset moves no optimum, but without a baseline it adds noise."""
    generator = torch.Generator().manual_seed(seed)
    ref_logits = torch.zeros(len(ADS))  # the reference: the ad server's current policy, here uniform
    logits = ref_logits.clone().requires_grad_()  # like RLHF, the policy starts as the reference
    optimizer = torch.optim.SGD([logits], lr=lr)  # plain SGD, so the variants differ only in their advantages
    probs, regret, noise = [logits.softmax(-1).detach()], [], []
    for _ in range(steps):
        # act: show `batch` ads drawn from π; each is clicked with its CTR
        ads = torch.multinomial(probs[-1], batch, replacement=True, generator=generator)
        clicks = torch.bernoulli(CTR[ads], generator=generator)
        logp = logits.log_softmax(-1)[ads]
        # the advantage is computed without gradient: it weighs the step, it is not optimised itself
        adv = advantages(clicks + offset, logp.detach(), ref_logits.log_softmax(-1)[ads], baseline, beta)
        # learn: Loss = -log π(a)·A, averaged over the impressions
        loss = -(logp * adv).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        noise.append(gradient_noise(ads, adv, probs[-1]))
        regret.append(float(CTR.max() - probs[-1] @ CTR))  # clicks lost, in expectation, by not always the best
        probs.append(logits.softmax(-1).detach())
    return Run(torch.stack(probs), torch.tensor(regret).cumsum(0), torch.tensor(noise))


def plot(runs: dict[str, Run], out: Path) -> list[Path]:
    """regret.png: cumulative regret per variant; policy.png: π(ad) per step, one panel per variant."""
    from matplotlib.figure import Figure  # the object API with the Agg renderer: no display needed

    out.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(5.5, 3.5))
    ax = figure.subplots()
    for name, run in runs.items():
        ax.plot(run.regret, label=name)
    ax.set(xlabel="step", ylabel="cumulative regret (clicks per impression)", title="regret")
    ax.legend()
    figure.savefig(out / "regret.png", dpi=90, bbox_inches="tight")
    figure = Figure(figsize=(4 * len(runs), 3.2))
    for ax, (name, run) in zip(figure.subplots(1, len(runs), sharey=True), runs.items(), strict=True):
        ax.stackplot(
            range(len(run.probs)), run.probs.T, labels=[f"{a} ({c:.2f})" for a, c in zip(ADS, CTR, strict=True)]
        )
        ax.set(xlabel="step", title=f"π per step: {name}", ylim=(0, 1))
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8, title="ad (CTR)")
    figure.savefig(out / "policy.png", dpi=90, bbox_inches="tight")
    return [out / "regret.png", out / "policy.png"]


def main(argv: list[str] | None = None) -> dict[str, Run]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bandit"), help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=300, help="updates, each on 32 impressions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--offset", type=float, default=0.0, help="reward = click + OFFSET (try 1)")
    args = parser.parse_args(argv)
    runs = {
        name: train(baseline, beta, args.steps, seed=args.seed, offset=args.offset)
        for name, (baseline, beta) in VARIANTS.items()
    }
    print(f"{'variant':<10}{'regret':>8}{'π(best)':>9}{'KL(π‖π_ref)':>13}{'grad noise':>12}")
    for name, run in runs.items():
        kl = float(kl_to_reference(run.probs[-1].log(), torch.zeros(len(ADS))))
        print(f"{name:<10}{run.regret[-1]:>8.2f}{run.best:>9.3f}{kl:>13.3f}{run.noise.mean():>12.4f}")
    print(f"the optimum of the kl variant (β = {BETA}) has π*(best) = {kl_optimum(BETA)[CTR.argmax()]:.3f}")
    print("wrote", *plot(runs, args.out))
    return runs


if __name__ == "__main__":
    main()
