"""ILQL's value heads on a causal LM's hidden states, and the advantage-perturbed policy they define.

ILQL (Snell et al. 2022, arXiv:2206.11871) learns, beside the LM π_β, token-level Q(s, ·) ∈ R^V (two heads,
each with a Polyak-averaged target copy) and V(s) ∈ R on the same hidden state s. At inference the policy is

    π(a | s) ∝ π_β(a | s) · exp(β · (min(Q̂₁, Q̂₂)(s, a) - V(s)))     (Q̂: the target heads)

i.e. logits + β·(Q̂ - V). `AdvantagePerturbedHead` computes exactly that in place of the LM's output layer,
so every consumer of the model's logits sees the same policy: transformers' `generate` (sampling, with
the KV cache), and the log-probabilities `rlhfkit eval` scores for its KL to the reference. A saved
offline directory is an ordinary HF model dir plus `ilql_heads.safetensors` and `ilql.json` (β and the
head sizes); `load_model` attaches the heads whenever those files are there. β = 0 gives the LM itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

HEADS_FILE = "ilql_heads.safetensors"
HEADS_CONFIG = "ilql.json"


def mlp(width: int, out: int) -> nn.Sequential:
    """hidden → hidden → out: the paper's (trlx's) two-layer heads, at the backbone's width (trlx: twice it)."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))


def perturbed_logits(
    logits: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, v: torch.Tensor, beta: float
) -> torch.Tensor:
    """logits + β·(min(Q₁, Q₂) - V): (..., V), (..., V), (..., V), (..., 1) -> (..., V).

    V(s) shifts every token alike, so it does not change the distribution; it is kept so that the
    added term is the advantage, as the paper writes it."""
    return logits + beta * (torch.minimum(q1, q2) - v)


class ILQLHeads(nn.Module):
    """Q₁, Q₂ (vocabulary-sized), their frozen target copies, and V (one value) on hidden states."""

    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.width, self.vocab = width, vocab
        self.q1, self.q2, self.v = mlp(width, vocab), mlp(width, vocab), mlp(width, 1)
        self.target_q1, self.target_q2 = mlp(width, vocab), mlp(width, vocab)
        for online, target in self.target_pairs():
            target.load_state_dict(online.state_dict())
            target.requires_grad_(False)

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.q1, self.target_q1), (self.q2, self.target_q2)]

    def target_q(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.target_q1(hidden), self.target_q2(hidden)

    def inference_state(self) -> dict[str, torch.Tensor]:
        """What sampling needs: the target Qs and V (the online Qs are training state only)."""
        return {
            f"{name}.{key}": value.detach().contiguous()
            for name in ("target_q1", "target_q2", "v")
            for key, value in getattr(self, name).state_dict().items()
        }


class AdvantagePerturbedHead(nn.Module):
    """The LM's output layer followed by `perturbed_logits`: hidden (..., H) -> logits (..., V)."""

    def __init__(self, lm_head: nn.Module, heads: ILQLHeads, beta: float) -> None:
        super().__init__()
        self.lm_head, self.heads, self.beta = lm_head, heads, beta

    @property
    def weight(self) -> torch.Tensor:  # transformers reads the output layer's weight (e.g. its vocabulary size)
        return cast(torch.Tensor, self.lm_head.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        if self.beta == 0:
            return logits
        q1, q2 = self.heads.target_q(hidden)
        return perturbed_logits(logits, q1, q2, self.heads.v(hidden), self.beta)


def save_heads(heads: ILQLHeads, beta: float, output_dir: Path) -> None:
    """`ilql_heads.safetensors` (target Qs and V) and `ilql.json` (β, sizes) beside a saved model."""
    save_file(heads.inference_state(), str(output_dir / HEADS_FILE))
    config = {"beta": beta, "width": heads.width, "vocab": heads.vocab}
    (output_dir / HEADS_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def has_heads(path: str | Path) -> bool:
    return (Path(path) / HEADS_FILE).is_file()


def attach_heads(model: PreTrainedModel, path: str | Path) -> PreTrainedModel:
    """The model with its output layer replaced by the advantage-perturbed one saved in `path`."""
    config = json.loads((Path(path) / HEADS_CONFIG).read_text())
    heads = ILQLHeads(config["width"], config["vocab"])
    missing, _ = heads.load_state_dict(load_file(str(Path(path) / HEADS_FILE)), strict=False)
    if any(not key.startswith(("q1.", "q2.")) for key in missing):
        raise ValueError(f"{Path(path) / HEADS_FILE}: missing {', '.join(missing)}")
    heads.to(model.device, model.dtype).requires_grad_(False)
    model.set_output_embeddings(AdvantagePerturbedHead(model.get_output_embeddings(), heads, float(config["beta"])))
    return model
