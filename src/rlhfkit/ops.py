"""Small pure functions on tensors shared by every stage (SFT, reward models, PPO, DPO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ_t m_t·x_t over `dim` (all elements when None); `mask` is 0/1 or bool, broadcastable to `values`."""
    weighted = values * mask.to(values.dtype)
    return weighted.sum() if dim is None else weighted.sum(dim)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(y_t | y_<t) of each target token: log_softmax(logits / T) gathered at the targets.

    logits: (..., V), targets: (...) int64 -> (...). Computed as -cross_entropy, which fuses the
    log-softmax and the gather and never materialises the (…, V) log-probabilities.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    if temperature != 1.0:
        flat_logits = flat_logits / temperature
    nll = F.cross_entropy(flat_logits, targets.reshape(-1), reduction="none")
    return -nll.view(targets.shape)


def fp32_linear(layer: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """layer(inputs) in float32, autocast or not: a scalar head (a reward, a value) read in bf16 keeps about
    3 significant digits, too coarse for the differences of rewards that a preference loss and an advantage
    are made of. (..., D) -> (..., out_features) float32."""
    bias = None if layer.bias is None else layer.bias.float()
    with torch.autocast(inputs.device.type, enabled=False):
        return F.linear(inputs.float(), layer.weight.float(), bias)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last 1 in a (B, T) 0/1 mask -> (B,) int64, whatever the padding side.

    Right padding (1 1 1 0 0), left padding (0 0 1 1 1) and both at once (0 1 1 1 0, a left-padded prompt
    with a right-padded response) all give the last real token. A row of zeros gives 0.
    """
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * mask.bool()).argmax(-1)


def fold_heads(
    weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_h s_h·(W_h·x + b_h) + Σ_h t_h as one linear map w·x + c.

    (W (H, D), b (H,), s (H,), t (H,)) -> (w (D,), c ()).
    """
    return scale @ weight, scale @ bias + shift.sum()
