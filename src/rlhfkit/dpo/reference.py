"""Sequence log-probabilities, and the reference model's, computed once before training and cached on disk.

The reference π_ref is fixed, so log π_ref(y|x) of every training and held-out response is computed in one
pass before the first step; training then never holds or runs a reference model. By default π_ref is the
policy's own starting weights (with LoRA: the policy with its adapters disabled), so no second model is
loaded at all. The cache file is named by a digest of everything the values depend on: the reference
weights, every token sequence with its loss mask (so the data, tokenizer, template and max_length), and
the autocast precision. Change any of them and the values are computed afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from array import array
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from rlhfkit.models.logprobs import lm_parts, target_logprobs
from rlhfkit.training.batching import TokenSequence, chunks, pad_batch, shard


class SequenceLogprobs(nn.Module):
    """Wraps a causal LM; forward returns each row's log π(y|x) = Σ log p over its trained targets, (B,),
    and the number of those targets, (B,). Only trained positions go through the output layer."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        self.parts = lm_parts(lm)  # a tuple, so the weights are registered once (under `lm`)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs, trained = target_logprobs(*self.parts, input_ids, attention_mask, loss_mask)  # (N,), (B, T-1)
        per_token = logprobs.new_zeros(trained.shape).masked_scatter(trained, logprobs)  # (B, T-1)
        return per_token.sum(-1), trained.sum(-1)


def score(
    model: nn.Module, sequences: list[TokenSequence], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`model` (a SequenceLogprobs) on the sequences, right-padded into one batch: log-probs and counts, (B,)."""
    batch = pad_batch(sequences, pad_id)
    return model(batch.input_ids.to(device), batch.attention_mask.to(device), batch.loss_mask.to(device))


def sequence_logps(
    model: nn.Module, sequences: list[TokenSequence], pad_id: int, micro: int, accelerator: Accelerator
) -> torch.Tensor:
    """log π(y|x) of every sequence, (n,) on the CPU, without gradients; the work is split over processes.

    Sequences go longest first, so each batch holds similar lengths and pads little.
    """
    by_length = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].input_ids))
    mine = shard(by_length, accelerator.process_index, accelerator.num_processes)
    found: list[tuple[int, float]] = []
    with torch.no_grad(), accelerator.autocast():
        for part in chunks(mine, micro):
            logps, _ = score(model, [sequences[i] for i in part], pad_id, accelerator.device)
            found += zip(part, logps.float().tolist(), strict=True)
    if accelerator.num_processes > 1:
        found = gather_object(found)
    out = torch.empty(len(sequences))
    for i, value in found:
        out[i] = value
    return out


def reference_digest(reference: nn.Module) -> str:
    """A digest of the weights that define the reference: all of them, or for a LoRA policy the frozen ones."""
    digest = hashlib.sha256()
    frozen_only = isinstance(reference, PeftModel)
    for p in reference.parameters():
        if frozen_only and p.requires_grad:
            continue
        digest.update(str((tuple(p.shape), p.dtype)).encode())
        digest.update(p.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sequences_digest(sequences: list[TokenSequence]) -> str:
    digest = hashlib.sha256()
    for s in sequences:
        digest.update(array("q", [len(s.input_ids), *s.input_ids, *s.loss_mask]).tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """`$RLHFKIT_CACHE/ref-logps`, or `~/.cache/rlhfkit/ref-logps`."""
    return Path(os.environ.get("RLHFKIT_CACHE") or "~/.cache/rlhfkit").expanduser() / "ref-logps"


def reference_logps(
    reference: PreTrainedModel,
    sequences: list[TokenSequence],
    pad_id: int,
    micro: int,
    accelerator: Accelerator,
    cache_dir: Path,
) -> tuple[torch.Tensor, Path, bool]:
    """log π_ref(y|x) of every sequence, (n,), read from the cache or computed and written to it.

    Returns (values, cache file, whether it was a cache hit). A peft model is run with its adapters
    disabled: the reference of a LoRA policy is its base model.
    """
    key = hashlib.sha256(
        f"{reference_digest(reference)}|{sequences_digest(sequences)}|{accelerator.mixed_precision}".encode()
    ).hexdigest()
    path = cache_dir / f"{key[:32]}.pt"
    hit = path.exists()
    accelerator.wait_for_everyone()  # every process has looked before the main one may write
    if hit:
        return torch.load(path), path, True
    adapters_off = reference.disable_adapter() if isinstance(reference, PeftModel) else contextlib.nullcontext()
    was_training = reference.training
    reference.eval()
    with adapters_off:
        values = sequence_logps(SequenceLogprobs(reference), sequences, pad_id, micro, accelerator)
    reference.train(was_training)
    if accelerator.is_main_process:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        torch.save(values, partial)
        partial.rename(path)  # atomic: a reader never sees half a file
    accelerator.wait_for_everyone()
    return values, path, False
