"""Next-token training of a causal LM on masked sequences: the maths and batches behind pretraining and SFT
(the loop is `run_loop.TrainingRun`'s).

Runs on accelerate, so one code path serves a laptop CPU and `accelerate launch` (DDP). The loss is the
token-level mean over the whole global batch (`reduction.GlobalMean`), so two processes give the gradient
of one process with the same global batch, whatever the padding.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.models.logprobs import lm_parts, target_logprobs
from rlhfkit.training.batching import BatchOrder, PaddedBatch, TokenSequence, chunks, pad_batch, shard
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.reduction import GlobalMean
from rlhfkit.training.run_loop import TrainingRun, TrainResult, total_steps


class NextTokenLoss(nn.Module):
    """Wraps a causal LM; forward returns (Σ NLL over trained targets, number of trained targets)."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        # A tuple, not attributes: registered twice, the weights would be saved under two names.
        self.parts = lm_parts(lm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor):
        logprobs, trained = target_logprobs(*self.parts, input_ids, attention_mask, loss_mask)
        return -logprobs.sum(), trained.sum()


def _all_reduce_sum(accelerator: Accelerator, value: torch.Tensor) -> torch.Tensor:
    return accelerator.reduce(value.detach().clone().float(), reduction="sum")


def evaluate(
    accelerator: Accelerator, model: nn.Module, data: list[TokenSequence], pad_id: int, micro: int
) -> dict[str, float]:
    """Held-out token-level NLL and perplexity, split over processes."""
    model.eval()
    nll = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    with torch.no_grad():
        mine = shard(list(range(len(data))), accelerator.process_index, accelerator.num_processes)
        for part in chunks(mine, micro):
            batch = pad_batch([data[i] for i in part], pad_id)
            batch_nll, batch_count = model(*_to(batch, accelerator.device))
            nll += batch_nll
            count += batch_count
    model.train()
    mean = (_all_reduce_sum(accelerator, nll) / _all_reduce_sum(accelerator, count).clamp(min=1)).item()
    return {"eval/loss": mean, "eval/ppl": math.exp(min(mean, 50.0))}


def _to(batch: PaddedBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.input_ids.to(device), batch.attention_mask.to(device), batch.loss_mask.to(device)


def train_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_data: list[TokenSequence],
    eval_data: list[TokenSequence],
    settings: TrainSettings,
    accelerator: Accelerator,
) -> TrainResult:
    """Optimise the next-token loss on `train_data`; returns the last step's metrics."""
    set_seed(settings.seed)
    order = BatchOrder(
        [len(s.input_ids) for s in train_data], settings.batch_size, settings.seed, settings.group_by_length
    )
    run = TrainingRun(accelerator, settings, NextTokenLoss(model), total_steps(settings, order))
    pad_id, micro, device = tokenizer.pad_token_id, settings.micro_batch_size, accelerator.device

    def train_step(step: int) -> dict[str, float]:
        """One optimizer step on the global batch's token-mean NLL, and its metrics."""
        mine = shard(order.global_batch(step - 1), accelerator.process_index, accelerator.num_processes)
        batches = [pad_batch([train_data[i] for i in part], pad_id) for part in chunks(mine, micro)]
        targets = GlobalMean.over(accelerator, sum(int(b.loss_mask[:, 1:].sum()) for b in batches))
        nlls: list[torch.Tensor] = []

        def micro_loss(batch: PaddedBatch) -> torch.Tensor:
            nll, _ = run.model(*_to(batch, device))
            nlls.append(nll.detach())
            return targets(nll)

        grad_norm = run.optimizer_step([partial(micro_loss, b) for b in batches])
        loss = (_all_reduce_sum(accelerator, sum(nlls, torch.zeros((), device=device))) / targets.count).item()
        return {
            "train/loss": loss,
            "train/lr": run.lr,
            "train/grad_norm": grad_norm,
            "perf/target_tokens_per_s": run.rate(targets.count),
        }

    return run.loop(
        "train",
        train_step,
        losses=["train/loss"],
        describe=lambda m: f"train loss {m['train/loss']:.3f}",
        evaluate=(lambda: evaluate(accelerator, run.model, eval_data, pad_id, micro)) if eval_data else None,
        report=lambda m: f"eval loss {m['eval/loss']:.3f} ppl {m['eval/ppl']:.2f}",
    )
