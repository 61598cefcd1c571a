"""Best-of-n sampling: n replies per prompt, the one a reward scores highest kept.

Best-of-n is the simplest way to spend a reward model: no training, only n samples and n scores per
prompt. Its distribution π_n moves away from the policy π by at most

    KL(π_n ‖ π) ≤ log n - (n - 1)/n   nats per response

(Stiennon et al. 2020, "Learning to summarize from human feedback", arXiv:2009.01325, appendix). The
bound is reached only when every reply is rare and no two tie; Beirami et al. 2024 (arXiv:2401.01879) show
that repeated replies and ties make the true KL smaller. `best_of_n_kl_exact` gives the exact KL for a
discrete distribution over reward levels; applied to the empirical distribution of m ≥ n samples of a
prompt it is a plug-in estimate, biased low for small m (at m = n every sample has probability 1/n).

Each prompt's n replies are rows of one batched generation, row (i, j) sampled from its own seed
(seed, i, j): a reply does not depend on the batch, and the first n of m samples are the samples of
best-of-n, so best-of-1, 2, 4, 8 of one run are nested.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.data.records import Text
from rlhfkit.generation.sampling import SamplingSettings, sample
from rlhfkit.scoring.sources import CombinedReward
from rlhfkit.training.progress import progress_bar


def best_of_n_kl_bound(n: int) -> float:
    """The analytic bound log n - (n - 1)/n on KL(π_best-of-n ‖ π) in nats per response (Stiennon et al. 2020,
    arXiv:2009.01325, appendix): 0 at n = 1, log 2 - 1/2 ≈ 0.193 at n = 2, log 4 - 3/4 ≈ 0.636 at n = 4."""
    if n < 1:
        raise ValueError(f"best_of n={n}: must be at least 1")
    return math.log(n) - (n - 1) / n


def best_of_n_kl_exact(probabilities: Sequence[float], n: int) -> float:
    """KL(π_n ‖ π) for a discrete π over reward levels ordered from worst to best, probabilities p_1..p_K.

    Best-of-n lands on level k when the best of n draws is k: π_n(k) = F_k^n - F_{k-1}^n, with F_k = Σ_{i≤k} p_i;
    within a level (a tie) the first draw is kept, so the level's replies keep their relative probabilities.
    KL = Σ_k π_n(k) log(π_n(k) / p_k). K equal levels of 1/K tend to the bound log n - (n - 1)/n as K → ∞.
    """
    kl, below = 0.0, 0.0
    for p in probabilities:
        at_most = min(1.0, below + p)
        mass = at_most**n - below**n
        if mass > 0:
            kl += mass * math.log(mass / p)
        below = at_most
    return kl


def reward_levels(rewards: Sequence[float], rtol: float = 1e-5, atol: float = 1e-6) -> list[float]:
    """The empirical distribution of a prompt's sampled rewards over levels, worst first: rewards within
    tolerance are one level (the same reply scored in two batches differs in the last bits)."""
    ordered = sorted(rewards)
    counts = [1]
    for previous, value in itertools.pairwise(ordered):
        if math.isclose(value, previous, rel_tol=rtol, abs_tol=atol):
            counts[-1] += 1
        else:
            counts.append(1)
    return [c / len(ordered) for c in counts]


def best_per_group(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(P, m) scores, m ≥ n replies per prompt -> (P,) index of the best of the first n (ties: the first)."""
    if not 1 <= n <= scores.shape[1]:
        raise ValueError(f"best_of n={n}: must be between 1 and the {scores.shape[1]} samples per prompt")
    return scores[:, :n].argmax(dim=1)  # argmax returns the first of equal maxima


def group_seeds(seed: int, prompt_rows: range, n: int) -> list[int]:
    """One sampling seed per (run seed, prompt row, sample), rows in prompt-major order."""
    return [hash((seed, row, j)) % (2**63) for row in prompt_rows for j in range(n)]


@dataclass(frozen=True)
class Groups:
    """m replies per prompt and their scores by the reward (with its terms)."""

    texts: list[list[str]]  # (P, m)
    scores: torch.Tensor  # (P, m)

    def best(self, n: int) -> tuple[list[str], torch.Tensor]:
        """Each prompt's best reply among its first n, and its score."""
        index = best_per_group(self.scores, n)
        return [group[i] for group, i in zip(self.texts, index.tolist(), strict=True)], self.scores[
            torch.arange(len(index)), index
        ]

    def kl_estimate(self, n: int) -> float:
        """Mean over prompts of the plug-in KL of best-of-n on each prompt's m samples (module docstring)."""
        kls = [best_of_n_kl_exact(reward_levels(row.tolist()), n) for row in self.scores]
        return sum(kls) / len(kls)


@torch.no_grad()
def score_groups(reward: CombinedReward, prompts: Sequence[Text], texts: list[list[str]]) -> torch.Tensor:
    """(P, m) combined rewards of each prompt's m replies."""
    flat_prompts = [p for p, group in zip(prompts, texts, strict=True) for _ in group]
    scores, _ = reward(flat_prompts, [t for group in texts for t in group])
    return scores.float().cpu().view(len(texts), -1)


def sample_groups(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    n: int,
    reward: CombinedReward,
    settings: SamplingSettings,
    batch_size: int,
    seed: int,
) -> Groups:
    """n replies per prompt, scored: each generate call samples `batch_size` prompts × n rows, row (i, j)
    from seed (seed, i, j)."""
    texts: list[list[str]] = []
    scores = []
    with progress_bar() as bar:
        task = bar.add_task(f"best-of-{n} sampling", total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            part = prompts[start : start + batch_size]
            rows = [p for p in part for _ in range(n)]
            seeds = group_seeds(seed, range(start, start + len(part)), n)
            flat = sample(model, tokenizer, rows, settings, seeds=seeds).texts
            groups = [flat[i * n : (i + 1) * n] for i in range(len(part))]
            texts += groups
            scores.append(score_groups(reward, part, groups))
            bar.update(task, advance=len(part))
    return Groups(texts, torch.cat(scores))
