"""Log-probabilities of a causal LM's trained targets, computed through its backbone and output layer."""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from rlhfkit.ops import token_logprobs


def lm_parts(lm: PreTrainedModel) -> tuple[nn.Module, nn.Module]:
    """The backbone (token ids to hidden states) and the output layer of a causal LM, through a peft wrapper."""
    inner = lm.get_base_model() if isinstance(lm, PeftModel) else lm
    return inner.base_model, inner.get_output_embeddings()


def target_logprobs(
    backbone: nn.Module,
    head: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x_t+1 | x_<=t) of every trained target, (N,), and which targets are trained, (B, T-1) bool.

    Only the positions whose next token is trained go through the output layer: prompt and padding
    positions never pay for the (tokens x vocabulary) projection and softmax. Shared by SFT (a sum over
    the batch) and the preference losses (a sum per sequence).
    """
    logits, trained = target_logits(backbone, head, input_ids, attention_mask, loss_mask)
    return token_logprobs(logits, input_ids[:, 1:][trained]), trained


def target_logits(
    backbone: nn.Module,
    head: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits predicting every trained target, (N, V) in row-major order, and the (B, T-1) trained mask.

    Only the positions whose next token is trained go through the output layer (see `target_logprobs`).
    """
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    trained = loss_mask[:, 1:].bool()  # (B, T-1): is token t+1 a training target?
    return head(hidden[:, :-1][trained]), trained
