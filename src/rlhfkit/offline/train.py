"""`rlhfkit offline`: many optimisation steps on a fixed dataset of scored replies, no reward model queried.

ILQL (Snell et al. 2022, arXiv:2206.11871): beside the LM, two token-level Q heads (with Polyak-averaged
target copies) and a V head on its hidden states, trained per reply token on

    Σ_i (Q_i(s_t, a_t) - y_t)²  +  L₂^τ(Q̂(s_t, a_t) - V(s_t))  +  α·Σ_i CE(Q_i(s_t, ·), a_t)  +  λ·NLL(a_t)

with y_t = r_t + γ·V(s_{t+1}) (the reward on the last token) and Q̂ = min of the target Qs (`losses.py`).
The LM's own NLL keeps π_β the data's policy; the heads then shift it at inference, logits + β·(Q̂ - V)
(`models/ilql.py`), so the saved directory loads as that policy in `rlhfkit eval` and `generate`.

`method: awr` is the cheap baseline: the LM's NLL with each reply weighted by exp(advantage / λ)
(reward-weighted regression), saved as a plain model.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import ConfigError
from rlhfkit.data.records import RewardedRecord
from rlhfkit.models.ilql import ILQLHeads, save_heads
from rlhfkit.models.loading import load_model, load_tokenizer, save_model, usable_length
from rlhfkit.models.logprobs import lm_parts
from rlhfkit.offline.data import ScoredSequences, load_scored, tokenize_scored, write_scored
from rlhfkit.offline.losses import awr_weights, bellman_targets, cql_loss, expectile_loss, polyak_update, q_loss
from rlhfkit.ops import token_logprobs
from rlhfkit.scoring.sources import RewardSource
from rlhfkit.training.batching import BatchOrder, PaddedBatch, chunks, pad_batch, shard
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.metrics import StepMetrics
from rlhfkit.training.reduction import GlobalMean
from rlhfkit.training.run_loop import TrainingRun, TrainResult, total_steps
from rlhfkit.training.runtime import finish_run, start_run


class OfflineConfig(TrainSettings):
    """Offline RL on scored replies: ILQL, or reward-weighted regression (AWR) for contrast."""

    model: str = Field("tiny-austen", description="policy to start from (usually the SFT model that wrote the data)")
    data: str | None = Field(
        None,
        description="`rewarded` records (prompt, response, reward); with `rewards`, candidates (prompt, responses)",
    )
    rewards: list[RewardSource] = Field(
        default_factory=list,
        description="score `data`'s candidates once with these sources before training (empty: read `reward`)",
    )
    method: Literal["ilql", "awr"] = Field("ilql", description="ILQL, or the AWR baseline (weighted NLL)")
    max_length: int = Field(256, ge=2, description="tokens per prompt + reply (the prompt loses its start first)")
    gamma: float = Field(0.99, ge=0, le=1, description="ILQL: discount per token")
    tau: float = Field(0.7, gt=0, lt=1, description="ILQL: expectile of V (0.5: mean of Q̂; near 1: its maximum)")
    cql_alpha: float = Field(
        0.1, ge=0, description="ILQL: weight of the CQL cross-entropy of Q toward the data's token"
    )
    nll_weight: float = Field(1.0, ge=0, description="ILQL: weight of the LM's NLL on the replies")
    polyak_rate: float = Field(0.01, gt=0, le=1, description="ILQL: target Qs move this share toward Q each step")
    beta: float = Field(4.0, ge=0, description="ILQL: advantage scale at inference (saved in ilql.json)")
    awr_temperature: float = Field(0.5, gt=0, description="AWR: λ in exp((R - mean R) / λ)")
    awr_max_weight: float = Field(20.0, gt=0, description="AWR: weights are clipped to this")
    output_dir: str = Field("runs/offline", description="where checkpoints, metrics.jsonl and the model go")
    learning_rate: float = Field(1e-4, gt=0, description="peak AdamW learning rate of the LM")
    head_learning_rate: float = Field(1e-3, gt=0, description="ILQL: peak learning rate of the new Q and V heads")
    eval_every: int = Field(0, ge=0, description="unused: the run has no held-out evaluation")


class OfflineObjective(nn.Module):
    """The LM (with ILQL's heads, or none for AWR); forward returns per-action losses and values, (N,) each."""

    def __init__(self, lm: PreTrainedModel, heads: ILQLHeads | None, config: OfflineConfig) -> None:
        super().__init__()
        self.lm, self.heads, self.config = lm, heads, config
        self.parts = lm_parts(lm)  # a tuple: registered twice, the weights would be saved under two names

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, rewards: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        backbone, lm_head = self.parts
        states = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        acted = loss_mask[:, 1:].bool()  # (B, T-1): is token t+1 an action (a reply token)?
        actions, hidden = input_ids[:, 1:][acted], states[acted]
        nll = -token_logprobs(lm_head(hidden), actions)
        if self.heads is None:  # AWR: `rewards` are the replies' weights
            weights = rewards[:, None].expand_as(acted)[acted]
            return {"loss": weights * nll, "nll": nll, "weight": weights}
        return self.ilql_losses(states, acted, hidden, actions, rewards) | {"nll": nll}

    def ilql_losses(self, states, acted, hidden, actions, rewards) -> dict[str, torch.Tensor]:
        heads, config = self.heads, self.config
        assert heads is not None
        values = heads.v(states).squeeze(-1)  # (B, T-1): V(s_t) at every position, for the next-state values
        targets = bellman_targets(values.detach(), acted, rewards, config.gamma)[acted]
        q1, q2 = heads.q1(hidden), heads.q2(hidden)
        q1_taken, q2_taken = (q.gather(-1, actions[:, None]).squeeze(-1) for q in (q1, q2))
        with torch.no_grad():
            target_taken = torch.minimum(*heads.target_q(hidden)).gather(-1, actions[:, None]).squeeze(-1)
        v = values[acted]
        terms = {
            "q": q_loss(q1_taken, targets) + q_loss(q2_taken, targets),
            "v": expectile_loss(target_taken, v, config.tau),
            "cql": cql_loss(q1, actions) + cql_loss(q2, actions),
        }
        return terms | {"q_value": q1_taken.detach(), "v_value": v.detach(), "advantage": (target_taken - v).detach()}

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-action loss: AWR's weighted NLL, or ILQL's sum of its terms."""
        if self.heads is None:
            return terms["loss"]
        c = self.config
        return terms["q"] + terms["v"] + c.cql_alpha * terms["cql"] + c.nll_weight * terms["nll"]


def train_offline(
    objective: OfflineObjective, data: ScoredSequences, pad_id: int, config: OfflineConfig, accelerator: Accelerator
) -> TrainResult:
    """Optimise the objective's per-action loss (mean over the global batch's actions)."""
    set_seed(config.seed)
    order = BatchOrder(data.lengths, config.batch_size, config.seed, config.group_by_length)
    heads = objective.heads
    rates: dict[nn.Module, float] | None = {heads: config.head_learning_rate} if heads is not None else None
    run = TrainingRun(accelerator, config, objective, total_steps(config, order), learning_rates=rates)
    device = accelerator.device
    per_reply = (
        data.rewards if heads is not None else awr_weights(data.rewards, config.awr_temperature, config.awr_max_weight)
    )

    def train_step(step: int) -> dict[str, float]:
        mine = shard(order.global_batch(step - 1), accelerator.process_index, accelerator.num_processes)
        parts = [
            (pad_batch([data.sequences[i] for i in part], pad_id), per_reply[part])
            for part in chunks(mine, config.micro_batch_size)
        ]
        actions = GlobalMean.over(accelerator, sum(int(b.loss_mask[:, 1:].sum()) for b, _ in parts))
        metrics = StepMetrics()

        def micro_loss(batch: PaddedBatch, rewards: torch.Tensor) -> torch.Tensor:
            terms = run.model(
                batch.input_ids.to(device),
                batch.attention_mask.to(device),
                batch.loss_mask.to(device),
                rewards.to(device),
            )
            loss = accelerator.unwrap_model(run.model).total(terms)
            metrics.add({f"offline/{key}": value for key, value in terms.items()} | {"offline/total": loss})
            return actions(loss.sum())

        grad_norm = run.optimizer_step([partial(micro_loss, *part) for part in parts])
        if heads is not None:
            for online, target in heads.target_pairs():
                polyak_update(target.parameters(), online.parameters(), config.polyak_rate)
        return metrics.mean(accelerator) | {"train/grad_norm": grad_norm, "train/lr": run.lr}

    return run.loop(
        config.method,
        train_step,
        losses=["offline/total"],
        describe=lambda m: f"{config.method} loss {m['offline/total']:.3f} nll {m['offline/nll']:.3f}",
    )


def load_data(
    config: OfflineConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[RewardedRecord], ScoredSequences]:
    """The records (scored now if `rewards` are given) and their token sequences; a bad row raises here,
    before anything is written to output_dir."""
    if config.data is None:
        raise ConfigError("offline: `data` is required (scored records, or candidates with `rewards`)")
    records = load_scored(config.data, config.rewards)
    return records, tokenize_scored(records, tokenizer, usable_length(config.model, config.max_length))


def offline(config: OfflineConfig) -> Path:
    """Train `config.model` offline on `config.data`; returns the saved directory (with ILQL's heads)."""
    tokenizer = load_tokenizer(config.model)
    records, data = load_data(config, tokenizer)
    accelerator = start_run(config, config)
    model = load_model(config.model, tokenizer)
    hidden = model.config.get_text_config().hidden_size
    heads = ILQLHeads(hidden, model.get_output_embeddings().weight.shape[0]) if config.method == "ilql" else None
    rewards = data.rewards
    accelerator.print(
        f"{config.method} on {config.model}: {len(records)} scored replies, reward mean {rewards.mean():.3f} "
        f"std {rewards.std():.3f}"
    )
    result = train_offline(OfflineObjective(model, heads, config), data, tokenizer.pad_token_id, config, accelerator)

    def save(output_dir: Path) -> None:
        save_model(model, tokenizer, output_dir)
        if heads is not None:
            save_heads(heads, config.beta, output_dir)
        if config.rewards:
            write_scored(records, output_dir / "scored.jsonl")

    return finish_run(accelerator, Path(config.output_dir), result.summary, save)
