"""The policy and its critic as one module, so one DDP wrapper and one optimizer serve both.

Three critics (`critic` in the config), or none for the critic-free estimators (GRPO, RLOO, REINFORCE++):
- `shared`: a linear value head on the policy's own last hidden states (one forward for both; the
  cheapest; with LoRA the value head trains beside the adapters);
- `policy`: a separate transformer initialised from the policy's starting weights, with a new value head;
- `reward`: a separate transformer initialised from a reward model's backbone, its value head from the
  reward head (gains, biases and head weights folded in), so the first values are the reward model's
  scores at each prefix (as OpenRLHF and TRL initialise their critics). The reward model is an rlhfkit
  causal_lm one or any sequence classifier with a `score` layer (GPT-2, Llama, ...; TRL's RewardTrainer).

Sequences are right-padded prompt + response rows (prompts unpadded at the start), so positions count
from 0 on every row and only response positions go through the LM and value heads.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import ConfigError
from rlhfkit.models.loading import fused_config, resolve_model_path
from rlhfkit.models.logprobs import lm_parts
from rlhfkit.models.prefix import SharedPrompts
from rlhfkit.models.reward import RewardModel
from rlhfkit.models.reward_ensemble import load_reward_model
from rlhfkit.ops import fold_heads, fp32_linear, token_logprobs
from rlhfkit.ppo.losses import entropy

CriticKind = Literal["shared", "policy", "reward"]


class ActorCritic(nn.Module):
    """forward(ids, mask, scored) -> (log π of the scored tokens (N,), values V(s) before each (N,) (None: no
    value head), entropy (N,) in eval mode or `with_entropy`, else None)."""

    def __init__(
        self, policy: PreTrainedModel, critic: nn.Module | None, value_head: nn.Linear | None, temperature: float
    ) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic  # None: the value head reads the policy's hidden states
        self.value_head = value_head  # None: critic-free, no value is predicted
        self.temperature = temperature
        self.parts = lm_parts(policy)  # a tuple, so the weights are not registered twice

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        scored: torch.Tensor,
        lm_only: bool = False,
        with_entropy: bool = False,
        shared: SharedPrompts | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`shared`: the rows' repeated prompts are read once (`models.prefix`); `input_ids`, `attention_mask`
        and `scored` are then those of `shared.batch` (each row's last prompt token and response)."""
        backbone, lm_head = self.parts
        if shared is not None and self.critic is not None:
            raise ValueError("shared prompts: a separate critic reads full rows")
        inputs = (
            {"input_ids": input_ids, "attention_mask": attention_mask} if shared is None else shared.inputs(backbone)
        )
        hidden = backbone(**inputs).last_hidden_state[:, :-1][scored]
        logits = lm_head(hidden)  # (N, V), only for the scored tokens
        targets = input_ids[:, 1:][scored]
        if lm_only:  # PPO-ptx: the language-modelling loss, at temperature 1
            return token_logprobs(logits, targets), None, None
        logits = logits.float() / self.temperature  # the temperature the responses were sampled at
        token_entropy = None
        if with_entropy or not self.training:  # a metric: the update has no entropy term and skips the softmax
            with torch.no_grad():
                token_entropy = entropy(logits)
        if self.value_head is None:
            return token_logprobs(logits, targets), None, token_entropy
        if self.critic is not None:
            hidden = self.critic(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1][scored]
        return token_logprobs(logits, targets), fp32_linear(self.value_head, hidden).squeeze(-1), token_entropy

    def reference_logprobs(self, reference: PreTrainedModel | None, input_ids, attention_mask, scored) -> torch.Tensor:
        """log π_ref of the scored tokens: a separate frozen model, or (reference None) this policy with its
        LoRA adapters switched off, which is the starting model without a second copy in memory."""
        with torch.no_grad(), adapters_off(self.policy) if reference is None else contextlib.nullcontext():
            backbone, lm_head = lm_parts(self.policy if reference is None else reference)
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1][scored]
            return token_logprobs(lm_head(hidden), input_ids[:, 1:][scored], self.temperature)


def adapters_off(model: nn.Module) -> contextlib.AbstractContextManager:
    if not isinstance(model, PeftModel):
        raise ValueError("the reference can be the policy itself only when the policy has LoRA adapters")
    return model.disable_adapter()


def build_actor_critic(
    policy: PreTrainedModel,
    policy_path: str,
    tokenizer: PreTrainedTokenizerBase,
    kind: CriticKind | None,
    reward_path: str | None,
    temperature: float,
) -> ActorCritic:
    """The policy with a critic of `kind` (see the module docstring); None: no critic and no value head."""
    if kind is None:
        return ActorCritic(policy, None, None, temperature)
    hidden_size = policy.config.get_text_config().hidden_size
    if kind == "shared":
        return ActorCritic(policy, None, zero_head(hidden_size), temperature)
    if kind == "policy":
        path = resolve_model_path(policy_path)
        critic = AutoModel.from_pretrained(path, config=fused_config(path), dtype=torch.float32)
        critic.resize_token_embeddings(len(tokenizer))
        return ActorCritic(policy, critic, zero_head(critic.config.get_text_config().hidden_size), temperature)
    if reward_path is None:
        raise ConfigError("critic=reward needs a reward model among `rewards`")
    reward_model = load_reward_model(reward_path)
    parts = reward_parts(reward_model) if isinstance(reward_model, RewardModel) else None
    if not isinstance(reward_model, RewardModel) or parts is None:
        raise ConfigError(
            f"critic=reward: {reward_path} must be one reward model read at the last token: rlhfkit causal_lm, "
            "or a ...ForSequenceClassification with a `score` layer (not an ensemble or an encoder)"
        )
    if reward_model.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"critic=reward: {reward_path} does not share the policy's tokenizer; use critic=policy")
    return ActorCritic(policy, parts[0], folded_reward_head(reward_model), temperature)


def reward_parts(model: RewardModel) -> tuple[nn.Module, nn.Linear] | None:
    """(transformer, linear head with one output per reward head) of a reward model read at the last token:
    rlhfkit's causal_lm backbone and head, or a sequence classifier's base model and `score` layer."""
    if model.head is not None:
        return model.backbone, model.head
    score = getattr(model.backbone, "score", None)
    return (model.hf_backbone.base_model, score) if isinstance(score, nn.Linear) else None


def zero_head(hidden_size: int) -> nn.Linear:
    """A value head that predicts 0 everywhere at the start: the first advantages are the plain returns."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def folded_reward_head(model: RewardModel) -> nn.Linear:
    """One linear layer computing Σ_h w_h·(gain_h·(W_h·x + b_h) + bias_h): the reward model's score."""
    parts = reward_parts(model)
    assert parts is not None, "a reward model read at the last token"  # build_actor_critic checks it
    _, linear = parts
    weights = torch.tensor([model.weights.get(name, 0.0) for name in model.head_names])
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)  # `score` layers have none
    w, c = fold_heads(linear.weight, bias, weights * model.gain, weights * model.bias)
    head = nn.Linear(linear.in_features, 1)
    with torch.no_grad():
        head.weight.copy_(w[None])
        head.bias.copy_(c)
    return head
