"""The reward model r(x, y): a backbone, one scalar per named head, and a gain and bias per head.

Two backbones. `causal_lm`: any causal LM's transformer (no LM head) with a linear head read at the
last real token, found from the attention mask, so left, right or two-sided padding give the same
reward; positions are counted from the mask too. `sequence_classification`: any
AutoModelForSequenceClassification with one label per head, which pools as it was built to (the last
non-pad token for decoders, [CLS] for encoders such as MiniLM).

Heads (e.g. helpful, honest, harmless) share the backbone and are trained on their own labels; the
reward used downstream is Σ_h w_h·r_h with weights chosen at use time. After training, each head gets
a gain and bias so that its rewards on a reference sample have mean 0 and std 1 (Ziegler et al. 2019,
arXiv:1909.08593, section 2.2).

A saved model is a directory: the backbone's and tokenizer's `save_pretrained` files, the head weights
(`reward_head.safetensors`, causal_lm only) and `reward_model.json` (backbone kind, head names, default
weights, gain, bias, max_length). It is what `rlhfkit.load_reward_model` and the PPO stage read.

A causal_lm model is saved as the backbone's `...ForSequenceClassification` checkpoint with one label, so
`AutoModelForSequenceClassification.from_pretrained(DIR)` (TRL, pipelines) reads the same reward that
`score()` gives: its bias-free `score` row is Σ_h w_h·gain_h·W_h with the saved weights, and the constant
Σ_h w_h·(gain_h·b_h + bias_h) is moved into the final norm's bias (heads compensated, so nothing changes
for rlhfkit). A backbone whose final norm has no bias (Llama's RMSNorm) cannot hold it: HF then reads the
score minus `hf_offset` (in `reward_model.json`). Either way HF pools at the last non-pad token, so the
input is prompt + reply + EOS, as rlhfkit and TRL's RewardTrainer read it.

`HFRewardModel` reads the other way: any AutoModelForSequenceClassification directory (TRL's
RewardTrainer output) scores prompt + reply as TRL trained it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhfkit.data.records import Message, Text
from rlhfkit.models.loading import (
    LoraSettings,
    context_length,
    fused_config,
    load_tokenizer,
    resolve_model_path,
    save_tokenizer,
)
from rlhfkit.ops import fold_heads, fp32_linear, last_index

Backbone = Literal["causal_lm", "sequence_classification"]
CONFIG_FILE = "reward_model.json"
HEAD_FILE = "reward_head.safetensors"
# Where transformers models keep the norm that ends the backbone: GPT-2; Llama, Qwen; GPT-NeoX, OPT; Phi.
FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm")


@dataclass(frozen=True)
class RewardScores:
    """What `score()` returns for N (prompt, response) pairs."""

    reward: torch.Tensor  # (N,) Σ_h w_h·r_h of the normalised head rewards (ensembles: mean over members)
    std: torch.Tensor  # (N,) standard deviation of that reward over ensemble members (zeros for one model)
    heads: dict[str, torch.Tensor]  # head name -> (N,) normalised reward (ensembles: mean over members)


def pad_sequences(
    sequences: list[list[int]], pad_id: int, side: Literal["left", "right"] = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), padded on `side`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def combine(heads: torch.Tensor, names: list[str], weights: dict[str, float]) -> torch.Tensor:
    """Σ_h w_h·r_h: (N, H) head rewards -> (N,); heads missing from `weights` get weight 0."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"no reward head named {', '.join(unknown)}; the heads are {', '.join(names)}")
    w = torch.tensor([float(weights.get(name, 0.0)) for name in names], dtype=heads.dtype)
    return heads @ w


class RewardModel(nn.Module):
    """r(x, y) for each named head; `forward` gives raw head outputs, `score` the normalised reward."""

    gain: torch.Tensor  # (H,) buffers: the normalisation gain·r + bias
    bias: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        heads: list[str],
        kind: Backbone = "causal_lm",
        max_length: int = 512,
        weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if len(set(heads)) != len(heads) or not heads:
            raise ValueError(f"reward heads need distinct names, got {heads}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.kind = kind
        self.head_names = list(heads)
        self.max_length = max_length
        self.weights = dict(weights) if weights is not None else {name: 1.0 for name in heads}
        self.head: nn.Linear | None = None
        if kind == "causal_lm":
            hidden = cast(PreTrainedModel, backbone).config.get_text_config().hidden_size
            self.head = nn.Linear(hidden, len(heads))
            # A small random head (std 1/√(d+1)): initial rewards near 0 whatever the width.
            nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden + 1))
            nn.init.zeros_(self.head.bias)
        self.register_buffer("gain", torch.ones(len(heads)))
        self.register_buffer("bias", torch.zeros(len(heads)))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        heads: list[str],
        kind: Backbone = "causal_lm",
        max_length: int = 512,
        weights: dict[str, float] | None = None,
        lora: LoraSettings | None = None,
    ) -> RewardModel:
        """A new reward model on a pretrained backbone (an rlhfkit name, local path or hub id)."""
        tokenizer = load_tokenizer(name_or_path)
        path = resolve_model_path(name_or_path)
        if kind == "causal_lm":
            backbone = AutoModel.from_pretrained(path, config=fused_config(path), dtype=torch.float32)
        else:
            labels = dict(enumerate(heads))
            config = fused_config(
                path, num_labels=len(heads), id2label=labels, label2id={v: k for k, v in labels.items()}
            )
            backbone = AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32)
        if len(tokenizer) > backbone.get_input_embeddings().weight.shape[0]:
            backbone.resize_token_embeddings(len(tokenizer))
        backbone.config.pad_token_id = tokenizer.pad_token_id  # decoders' classification heads pool with it
        if lora is not None and lora.enabled:
            from peft import LoraConfig, get_peft_model

            task = "FEATURE_EXTRACTION" if kind == "causal_lm" else "SEQ_CLS"  # SEQ_CLS also trains the classifier
            backbone = get_peft_model(
                backbone,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    task_type=task,
                ),
            )
        return cls(backbone, tokenizer, heads, kind, max_length, weights)

    @property
    def device(self) -> torch.device:
        return self.gain.device

    @property
    def hf_backbone(self) -> PreTrainedModel:
        """The backbone as transformers types it (a PeftModel forwards `config`, `base_model`, ... to its model)."""
        return cast(PreTrainedModel, self.backbone)

    @property
    def linear_head(self) -> nn.Linear:
        """The causal_lm head; sequence_classification models have none."""
        if self.head is None:
            raise TypeError(f"a {self.kind} reward model has no linear head")
        return self.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) head outputs: (B, T) ids and 0/1 mask -> (B, H)."""
        if self.head is None:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # 0, 1, 2, ... over the real tokens only
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        ).last_hidden_state  # (B, T, D)
        last = last_index(attention_mask)  # (B,)
        return fp32_linear(self.head, hidden[torch.arange(hidden.shape[0], device=hidden.device), last])  # (B, H)

    @property
    def token_limit(self) -> int:
        """max_length, or fewer if the backbone has fewer positions (a longer sequence would index past them)."""
        context = context_length(self.hf_backbone.config)
        return min(self.max_length, context or self.max_length)

    def encode(self, prompt: Text, response: Text) -> list[int]:
        """Token ids of prompt + response, as the model reads them, at most `token_limit` long.

        causal_lm: prompt tokens, then response tokens and EOS, so the reward is read at the EOS that
        follows the whole reply; too long a sequence loses its start (the read token must stay).
        sequence_classification: the tokenizer's own text-pair encoding ([CLS] p [SEP] r [SEP] for BERT)
        and truncation. Chat prompts go through the chat template with the reply as the assistant turn.
        """
        tok = self.tokenizer
        if not isinstance(prompt, str):
            ids = chat_ids(tok, prompt, response)
        elif self.kind == "causal_lm":
            ids = (
                tok(prompt)["input_ids"]
                + tok(cast(str, response) + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
            )
        else:
            return tok(prompt, response, truncation=True, max_length=self.token_limit)["input_ids"]
        return ids[-self.token_limit :] if self.kind == "causal_lm" else ids[: self.token_limit]

    def collate(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (input_ids, attention_mask) on the model's device."""
        ids, mask = pad_sequences(sequences, self.tokenizer.pad_token_id)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def rewards(
        self, prompts: Sequence[Text], responses: Sequence[Text], normalized: bool = True, batch_size: int = 32
    ) -> torch.Tensor:
        """(N, H) head rewards, normalised (gain·r + bias) or raw; batched by length, any N."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        was_training = self.training
        self.eval()
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = torch.zeros(len(encoded), len(self.head_names))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self(*self.collate([encoded[i] for i in rows])).float().cpu()
        self.train(was_training)
        return out * self.gain.cpu() + self.bias.cpu() if normalized else out

    def score(
        self, prompts: Sequence[Text], responses: Sequence[Text], weights: dict[str, float] | None = None
    ) -> RewardScores:
        """The reward Σ_h w_h·r_h of each (prompt, response), weights defaulting to the saved ones."""
        heads = self.rewards(prompts, responses)
        reward = combine(heads, self.head_names, self.weights if weights is None else weights)
        return RewardScores(reward, torch.zeros_like(reward), dict(zip(self.head_names, heads.T, strict=True)))

    def fit_normalization(self, prompts: list[Text], responses: list[Text]) -> None:
        """Set gain and bias so that each head's rewards on this reference sample have mean 0, std 1."""
        raw = self.rewards(prompts, responses, normalized=False)  # (N, H)
        mean = raw.mean(0)
        std = raw.std(0) if raw.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant head is only centred
        self.gain.copy_(1 / std)
        self.bias.copy_(-mean / std)

    def save(self, path: str | Path) -> Path:
        """Write the directory described in the module docstring; LoRA adapters are merged first."""
        from peft import PeftModel

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if isinstance(self.backbone, PeftModel):
            self.backbone = self.backbone.merge_and_unload()
        exported, offset = self.hf_backbone, 0.0
        if self.head is not None:
            offset = self.move_constant_into_final_norm()
            exported = self.sequence_classifier()
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, path / HEAD_FILE)
        exported.save_pretrained(path)
        save_tokenizer(self.tokenizer, self.hf_backbone.config, path)
        about: dict[str, Any] = {
            "backbone": self.kind,
            "heads": self.head_names,
            "weights": self.weights,
            "gain": self.gain.tolist(),
            "bias": self.bias.tolist(),
            "max_length": self.max_length,
        }
        if exported is not self.backbone:
            about["hf_offset"] = offset  # score() = AutoModelForSequenceClassification's logit + this
        (path / CONFIG_FILE).write_text(json.dumps(about, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """A model written by `save`."""
        path = Path(path)
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{path}: not a reward model directory (no {CONFIG_FILE})")
        about = json.loads((path / CONFIG_FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(path)
        if about["backbone"] == "causal_lm":
            backbone = load_causal_backbone(path)
        else:
            backbone = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        model = cls(backbone, tokenizer, about["heads"], about["backbone"], about["max_length"], about["weights"])
        if model.head is not None:
            model.head.load_state_dict(load_file(path / HEAD_FILE))
        model.gain.copy_(torch.tensor(about["gain"]))
        model.bias.copy_(torch.tensor(about["bias"]))
        return model.eval()

    def combined_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, c) with score = w·h + c for the backbone's last hidden state h, under the saved weights (causal_lm)."""
        weights = torch.tensor([float(self.weights.get(n, 0.0)) for n in self.head_names], device=self.device)
        head = self.linear_head
        return fold_heads(head.weight, head.bias, weights * self.gain, weights * self.bias)

    @torch.no_grad()
    def move_constant_into_final_norm(self) -> float:
        """Shift the final norm's bias by δ = c·w/|w|² (so w·h gains c) and every head's bias by -W_h·δ (so no
        head's raw reward moves): afterwards score = w·h exactly, what a bias-free `score` layer computes.
        Returns the constant left out of w·h: 0, or c where no final-norm bias holds it."""
        w, c = self.combined_head()
        norm_bias = final_norm_bias(self.backbone)
        if norm_bias is None or float(w @ w) == 0.0:
            return float(c)
        delta = c * w / (w @ w)
        was_training, saved = self.backbone.training, norm_bias.clone()
        self.backbone.eval()  # no dropout: the probe compares two forward passes
        probe = torch.tensor([[self.tokenizer.eos_token_id or 0]], device=self.device)
        before = self.backbone(input_ids=probe).last_hidden_state
        norm_bias.add_(delta)
        moved = self.backbone(input_ids=probe).last_hidden_state - before
        self.backbone.train(was_training)
        if not torch.allclose(moved, delta.expand_as(moved), atol=1e-5, rtol=1e-4):
            norm_bias.copy_(saved)  # the norm is not the backbone's last operation: leave it alone
            return float(c)
        head = self.linear_head
        head.bias.sub_(head.weight @ delta)
        return float(self.combined_head()[1])

    def sequence_classifier(self) -> PreTrainedModel:
        """The backbone inside its architecture's ...ForSequenceClassification, `score` = the combined head
        (shares the backbone's weights; for `save_pretrained`), or the backbone alone where that class reads
        no `score` layer."""
        config = copy.deepcopy(self.hf_backbone.config)
        config.num_labels = 1
        config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
        try:
            with torch.device("meta"):  # its own random backbone is never built
                classifier = AutoModelForSequenceClassification.from_config(config)
        except ValueError:  # no ...ForSequenceClassification for this model type
            return self.hf_backbone
        if not isinstance(getattr(classifier, "score", None), nn.Linear):
            return self.hf_backbone
        setattr(classifier, classifier.base_model_prefix, self.backbone)
        classifier.score = nn.Linear(self.linear_head.in_features, 1, bias=False, device=self.device)
        with torch.no_grad():
            classifier.score.weight.copy_(self.combined_head()[0][None])
        return classifier


class HFRewardModel(RewardModel):
    """Any AutoModelForSequenceClassification directory without `reward_model.json` (TRL's RewardTrainer
    output, a hub reward model), read as TRL's RewardTrainer trains: the text prompt + reply, EOS appended
    unless it ends so already (`append_eos`), tokenised whole; chat through the chat template, which ends
    its turns itself. One head per label ("reward" for one), gain 1, bias 0; the class pools as it was built
    to. Too long a text keeps its end where the class reads the last token (`score` layers), else its start."""

    def __init__(self, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, append_eos: bool = True) -> None:
        config = backbone.config
        labels = cast(dict[int, str], config.id2label)  # the config's __post_init__ makes the keys ints
        heads = ["reward"] if len(labels) == 1 else [labels[i] for i in range(len(labels))]
        super().__init__(backbone, tokenizer, heads, "sequence_classification", context_length(config) or 512)
        self.append_eos = append_eos
        self.keeps_end = isinstance(getattr(backbone, "score", None), nn.Linear)

    def encode(self, prompt: Text, response: Text) -> list[int]:
        if not isinstance(prompt, str):
            ids = chat_ids(self.tokenizer, prompt, response)
        else:
            text, eos = prompt + cast(str, response), self.tokenizer.eos_token
            ids = self.tokenizer(text + eos if self.append_eos and eos and not text.endswith(eos) else text)
            ids = ids["input_ids"]
        return ids[-self.max_length :] if self.keeps_end else ids[: self.max_length]

    @classmethod
    def load(cls, path: str | Path, append_eos: bool = True) -> HFRewardModel:
        tokenizer = AutoTokenizer.from_pretrained(path)
        backbone = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # what TRL's RewardTrainer pads with then
        if backbone.config.pad_token_id is None:
            backbone.config.pad_token_id = tokenizer.pad_token_id  # the class pools at the last non-pad token
        return cls(backbone, tokenizer, append_eos).eval()


def is_sequence_classifier(path: Path) -> bool:
    """A transformers directory whose config names a ...ForSequenceClassification architecture."""
    config = path / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def chat_ids(tokenizer: PreTrainedTokenizerBase, prompt: list[Message], response: Text) -> list[int]:
    """Token ids of a chat prompt with the reply as the assistant turn(s), through the chat template."""
    turns = [_as_dict(m) for m in prompt]
    turns += (
        [_as_dict(m) for m in response]
        if not isinstance(response, str)
        else [{"role": "assistant", "content": response}]
    )
    return tokenizer(tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False)["input_ids"]


def final_norm_bias(backbone: nn.Module) -> nn.Parameter | None:
    """The bias of the backbone's closing norm, if it has one (see FINAL_NORMS)."""
    for name in FINAL_NORMS:
        bias = getattr(getattr(backbone, name, None), "bias", None)
        if isinstance(bias, nn.Parameter):
            return bias
    return None


def load_causal_backbone(path: Path) -> nn.Module:
    """The transformer of a saved causal_lm reward model (directories saved before the HF export hold it alone)."""
    if is_sequence_classifier(path):
        return AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).base_model
    return AutoModel.from_pretrained(path, dtype=torch.float32)


def _as_dict(message: Message | dict) -> dict:
    return message.model_dump() if isinstance(message, Message) else dict(message)
