"""Load any causal LM and its tokenizer by hub id, local path or rlhfkit default name.

The defaults (`tiny-austen`, `smollm2-135m-instruct`) resolve to local directories, so nothing is fetched
from a hub for them. Every tokenizer leaves here with a pad token distinct from EOS: a pad equal to EOS
makes "stop here" and "nothing here" the same token, which breaks EOS handling in generation and masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from pydantic import Field
from rich.console import Console
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhfkit import assets
from rlhfkit.config import Config, UserError
from rlhfkit.models.ilql import attach_heads, has_heads

console = Console(stderr=True)

PAD_TOKEN = "<|pad|>"


class LoraSettings(Config):
    """LoRA adapters through peft (Hu et al. 2021, arXiv:2106.09685)."""

    enabled: bool = Field(False, description="train LoRA adapters instead of all weights")
    r: int = Field(16, description="rank of the adapter matrices")
    alpha: int = Field(32, description="scale numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.0, description="dropout on the adapter input")
    target_modules: str | list[str] = Field("all-linear", description="modules that get adapters")


class ModelNotFoundError(UserError):
    """A model name or path that names no loadable model; the message says where it was looked for."""


def resolve_model_path(name_or_path: str) -> str:
    """Map an rlhfkit default name to its local directory; anything else is passed to from_pretrained,
    once `check_model_source` has found it."""
    if name_or_path == "smollm2-135m-instruct":
        from rlhfkit.models.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    path = assets.resolve(name_or_path)
    check_model_source(name_or_path, path)
    return path


def check_model_source(name: str, path: str) -> None:
    """A ModelNotFoundError unless `path` is a directory written by save_pretrained (a model's config.json or
    a tokenizer's tokenizer_config.json) or a hub id that can be fetched: online, or offline (HF_HUB_OFFLINE)
    with its config.json in the hub cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    local = Path(path).expanduser()
    if local.is_dir():
        if not any((local / saved).is_file() for saved in ("config.json", "tokenizer_config.json")):
            raise ModelNotFoundError(
                f"model {name}: {local.resolve()} is a directory without config.json or tokenizer_config.json"
            )
        return
    looks_local = local.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path
    if looks_local:
        raise ModelNotFoundError(f"model {name}: no such directory {local.resolve()}")
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(path, "config.json"), str):
        raise ModelNotFoundError(
            f"model {name}: no directory {local.resolve()}, and no hub model {path!r} in the local hub cache "
            "(HF_HUB_OFFLINE is set, so nothing is downloaded)"
        )


def usable_length(name_or_path: str, max_length: int) -> int:
    """`max_length`, or the model's own context if that is shorter: a longer sequence would index past it."""
    context = context_length(AutoConfig.from_pretrained(resolve_model_path(name_or_path)))
    return min(max_length, context or max_length)


# The same function as one fused kernel: GPT-2's "gelu_new" is the tanh GELU written as five element-wise
# ops; "gelu_pytorch_tanh" is torch's gelu(approximate="tanh"), equal to 1e-6 and ~18% faster per step
# for tiny-austen on a CPU.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def fused_config(path: str, **overrides) -> PretrainedConfig:
    """The checkpoint's config (with `overrides`), its activation swapped for a fused equal one if there is one."""
    config = AutoConfig.from_pretrained(path, **overrides)
    activation = getattr(config, "activation_function", None)  # the GPT-2 family's name for its MLP activation
    if activation in FUSED_ACTIVATIONS:
        config.activation_function = FUSED_ACTIVATIONS[activation]
    return config


def ensure_distinct_pad(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer a pad token that is not EOS; returns True when a new token was added."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    if PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = PAD_TOKEN
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def load_tokenizer(name_or_path: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token distinct from EOS (added if the checkpoint has none)."""
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:  # a hub id that could not be fetched (online): HF's first line says why
        raise ModelNotFoundError(f"model {name_or_path}: {str(error).splitlines()[0]}") from None
    if ensure_distinct_pad(tokenizer):
        console.print(f"[yellow]{name_or_path}: added pad token {PAD_TOKEN!r} (pad must differ from EOS)")
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    lora: LoraSettings | None = None,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A causal LM, its embeddings grown to the tokenizer's vocabulary, optionally wrapped with LoRA.

    A directory saved by `rlhfkit offline` (ILQL) loads as its advantage-perturbed policy (`models/ilql.py`)."""
    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, config=fused_config(path), dtype=dtype)
    if tokenizer is not None:
        if len(tokenizer) > cast(nn.Embedding, model.get_input_embeddings()).num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if has_heads(path):
        attach_heads(model, path)
    if lora is not None and lora.enabled:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        return cast(PreTrainedModel, get_peft_model(model, config))  # forwards the PreTrainedModel interface
    return model


ADAPTER_DIR = "adapter"


def context_length(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's position embeddings cover (None when the config does not say)."""
    text = config.get_text_config()
    return getattr(text, "n_positions", None) or getattr(text, "max_position_embeddings", None)


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig, output_dir: Path) -> None:
    """save_pretrained, with `model_max_length` capped at the model's context, so that pipelines truncate
    to it instead of indexing past the position embeddings (a trained BPE tokenizer says ~1e30)."""
    context = context_length(config)
    if context is not None and tokenizer.model_max_length > context:
        tokenizer.model_max_length = context
    tokenizer.save_pretrained(output_dir)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """save_pretrained for model and tokenizer. LoRA adapters are also saved alone in `adapter/` (peft's
    files, for PeftModel / AutoPeftModelForCausalLM over the base model) and then merged, so any loader can
    read the main directory. `weights`: the full state dict where the model's own parameters are shards (FSDP)."""
    from peft import PeftModel

    output_dir.mkdir(parents=True, exist_ok=True)
    if weights is not None:  # no LoRA here: TrainingRun refuses it under FSDP
        model.save_pretrained(output_dir, state_dict=weights)
        save_tokenizer(tokenizer, model.config, output_dir)
        return
    if isinstance(model, PeftModel):
        model.save_pretrained(output_dir / ADAPTER_DIR)
        save_tokenizer(tokenizer, model.config, output_dir / ADAPTER_DIR)  # AutoPeftModel resizes embeddings to it
        model = model.merge_and_unload()
    model.save_pretrained(output_dir)
    save_tokenizer(tokenizer, model.config, output_dir)


def disable_dropout(model: nn.Module) -> None:
    """p = 0 in every dropout layer: the policy then scores a sequence as the reference pass (eval mode) did."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
