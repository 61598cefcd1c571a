"""Preference losses without a reward model: pure functions of policy-to-reference log-ratios.

Every loss takes the log-ratios of the preferred and the dispreferred responses,

    chosen   = log π_θ(y_w|x) - log π_ref(y_w|x),    rejected = log π_θ(y_l|x) - log π_ref(y_l|x),

each a sum over the response's tokens, and returns `(losses, metrics)`: one loss per training unit (a
pair; for KTO a judged response) and per-example metric tensors under `dpo/`. The trainer sums both over
the whole global batch and divides by its size, so a step's value does not depend on how the batch is
split into micro-batches and processes. They share one signature, so `LOSSES` is the only list of names;
a loss ignores the scalars it has no use for (`label_smoothing` is cDPO's, `reference_point` KTO's).

Paired losses (sigmoid, cdpo, ipo, hinge) see aligned (N,) tensors: chosen[i] and rejected[i] answer the
same prompt. KTO sees unrelated (N_d,) desirable and (N_u,) undesirable responses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rlhfkit.training.metrics import Metrics

PreferenceLoss = Callable[..., tuple[torch.Tensor, Metrics]]


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> Metrics:
    """DPO's implicit rewards r = β·log-ratio (Rafailov et al. 2023, eq. 5), their margin, and accuracy."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "dpo/rewards/chosen": beta * chosen,
        "dpo/rewards/rejected": beta * rejected,
        "dpo/rewards/margin": beta * (chosen - rejected),
        "dpo/accuracy": (chosen > rejected).float(),  # a tie counts as wrong
    }


def sigmoid(
    chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float, label_smoothing: float, reference_point: torch.Tensor
) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7): the Bradley-Terry likelihood of the labels
    under the implicit reward β·log(π_θ/π_ref),

        loss = -log sigmoid(β·(chosen - rejected)).

    With π_θ = π_ref every loss is log 2.
    """
    return -F.logsigmoid(beta * (chosen - rejected)), _pair_metrics(chosen, rejected, beta)


def cdpo(
    chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float, label_smoothing: float, reference_point: torch.Tensor
) -> tuple[torch.Tensor, Metrics]:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO"):
    each label is taken to be flipped with probability ε = `label_smoothing`,

        loss = -(1 - ε)·log sigmoid(β·h) - ε·log sigmoid(-β·h),   h = chosen - rejected,

    so the optimum is a finite margin h* = log((1 - ε)/ε)/β instead of h → ∞. ε = 0 is `sigmoid`.
    """
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, _pair_metrics(chosen, rejected, beta)


def ipo(
    chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float, label_smoothing: float, reference_point: torch.Tensor
) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17), with τ = `beta`: regress the log-ratio gap on a
    fixed target instead of pushing it to infinity,

        loss = (h - 1/(2τ))²,   h = chosen - rejected  (sequence log-ratios, as the equation writes them).

    TRL divides each log-ratio by its response length first; here h is the paper's, unnormalised.
    """
    return (chosen - rejected - 1 / (2 * beta)) ** 2, _pair_metrics(chosen, rejected, beta)


def hinge(
    chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float, label_smoothing: float, reference_point: torch.Tensor
) -> tuple[torch.Tensor, Metrics]:
    """SLiC's calibration hinge (Zhao et al. 2023, SLiC-HF, arXiv:2305.10425, eq. 1) on reference-normalised
    likelihoods, as RSO writes it (Liu et al. 2023, arXiv:2309.06657):

        loss = max(0, 1 - β·(chosen - rejected)),

    zero once the implicit-reward margin reaches 1 (a log-ratio gap of 1/β).
    """
    return torch.relu(1 - beta * (chosen - rejected)), _pair_metrics(chosen, rejected, beta)


def kto(
    chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float, label_smoothing: float, reference_point: torch.Tensor
) -> tuple[torch.Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306, section 4.1) on unpaired judgements: `chosen` holds the
    log-ratios r of desirable responses, `rejected` those of undesirable ones (any counts), and
    z₀ = `reference_point` estimates KL(π_θ‖π_ref) (clamped at 0, no gradient). With λ_D = λ_U = 1,

        loss = 1 - sigmoid(β·(r - z₀))  for a desirable response,
        loss = 1 - sigmoid(β·(z₀ - r))  for an undesirable one.

    Returns the losses of the desirable responses, then the undesirable ones. Accuracy: the share of
    responses on their side of the reference point.
    """
    z0 = reference_point.detach()
    losses = torch.cat([1 - torch.sigmoid(beta * (chosen - z0)), 1 - torch.sigmoid(beta * (z0 - rejected))])
    chosen, rejected = chosen.detach(), rejected.detach()
    metrics = {
        "dpo/rewards/chosen": beta * chosen,
        "dpo/rewards/rejected": beta * rejected,
        "dpo/accuracy": torch.cat([chosen > z0, rejected < z0]).float(),
        "dpo/kl": z0.reshape(1),
    }
    return losses, metrics


def chosen_nll(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of each preferred response, -log π_θ(y_w|x)/|y_w|: the likelihood term RPO adds to DPO
    (Pang et al. 2024, "Iterative Reasoning Preference Optimization", arXiv:2404.19733, the DPO+NLL loss),
    so that the chosen responses' probability cannot fall while the margin grows. (N,) -> (N,).
    """
    return -chosen_logps / chosen_tokens.clamp(min=1)


LOSSES: dict[str, PreferenceLoss] = {"sigmoid": sigmoid, "cdpo": cdpo, "ipo": ipo, "hinge": hinge, "kto": kto}
UNPAIRED_LOSSES = frozenset({"kto"})  # trained on single judged responses, with a KL reference point
