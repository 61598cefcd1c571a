"""One prepared GPU benchmark: rlhfkit's SFT, reward, DPO and PPO steps and HF generation on a randomly initialised
~0.5B model, bf16, with tokens/s, MFU and peak memory.

    python bench/gpu.py --output-dir "$OUT"            # an H100/H200: a few minutes, no internet, no hub weights
    python bench/gpu.py --smoke --output-dir /tmp/gpu  # a 2-layer model on the CPU: the script end to end

The model is `bench/models/qwen2-0.5b.json` (Qwen2-0.5B's shape, 494M parameters, built with random weights;
`--config` for another). Each stage builds the model afresh (fp32 master weights, AdamW), prepares it with accelerate
(`mixed_precision="bf16"`: autocast, as the trainers run with `mixed_precision: bf16`) and times `--steps` optimizer
steps after `--warmup`, each of `--accum` micro-batches of `--micro-batch` random sequences of `--seq-len` tokens,
through rlhfkit's own step (`run_loop.optimizer_step`: autocast, accumulation, clipping, fused AdamW) and losses:

- sft: `NextTokenLoss`, every position trained;
- reward: the backbone, a scalar head read at the last token (`fp32_linear`), `bradley_terry_loss` on pairs;
- dpo: `target_logprobs` of chosen and rejected summed per sequence, `dpo.losses.sigmoid` against reference
  log-probabilities computed in the same step by a no-grad pass (as a DPO run without precomputed references does);
- ppo: `ActorCritic` (shared value head), old log-probs and values from a no-grad pass, then `clipped_surrogate` plus
  `clipped_value_loss` on the response half of each sequence;
- generate: HF `generate` (sampling, KV cache, bf16 weights), `--gen-batch` prompts of `--gen-prompt` tokens,
  `--gen-tokens` new tokens each (EOS off, so every row generates them all).

FLOPs per token: 6·N + 12·L·d·T for a trained pass and 2·N + 4·L·d·T for a forward-only one (N: the parameters of
the matrix multiplications, the output layer included where it runs; L layers, width d, T tokens; Chowdhery et al.
2022, PaLM, appendix B). MFU = FLOPs per second / the card's dense bf16 peak (H100 SXM and H200: 989 TFLOP/s;
`--peak-tflops` for another card). Writes gpu.json in --output-dir ($OUT by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from rlhfkit.dpo.losses import sigmoid
from rlhfkit.models.logprobs import lm_parts, target_logprobs
from rlhfkit.ops import fp32_linear, last_index
from rlhfkit.ppo.losses import clipped_surrogate, clipped_value_loss
from rlhfkit.ppo.model import ActorCritic, zero_head
from rlhfkit.reward.losses import bradley_terry_loss
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.lm_trainer import NextTokenLoss
from rlhfkit.training.run_loop import build_optimizer, optimizer_step

MODEL_CONFIG = Path(__file__).with_name("models") / "qwen2-0.5b.json"
SMOKE_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 512}  # fmt: skip
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16, SXM parts


@dataclass(frozen=True)
class Shape:
    seq_len: int
    micro_batch: int
    accum: int
    steps: int
    warmup: int
    gen_batch: int
    gen_prompt: int
    gen_tokens: int


@dataclass(frozen=True)
class Pass:
    """FLOPs per token of a model's passes: `matmul` parameters, `layers`, `width`."""

    matmul: int
    layers: int
    width: int

    def flops(self, tokens_per_row: int, trained: bool) -> float:
        attention = self.layers * self.width * tokens_per_row
        return 6 * self.matmul + 12 * attention if trained else 2 * self.matmul + 4 * attention


def passes(model: PreTrainedModel) -> tuple[Pass, Pass]:
    """(with the output layer, without it). The backbone's matmul parameters are all but the input embeddings
    (norms and biases are a rounding error); the output layer is vocabulary x width, tied or not."""
    config = model.config
    head = config.vocab_size * config.hidden_size
    total = sum(p.numel() for p in model.parameters())  # tied: the embeddings and the output layer counted once
    body = total - head * (1 if config.tie_word_embeddings else 2)
    layers, width = config.num_hidden_layers, config.hidden_size
    return Pass(body + head, layers, width), Pass(body, layers, width)


def peak_flops(device: torch.device, override: float | None) -> tuple[str, float | None]:
    """(the device's name, its dense bf16 peak in FLOP/s, None when unknown)."""
    if device.type != "cuda":
        return platform.processor() or "cpu", override * 1e12 if override else None
    name = torch.cuda.get_device_name(device)
    found = override or next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name), None)
    return name, found * 1e12 if found else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def random_ids(rows: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), device=device)


def new_model(config: PretrainedConfig, device: torch.device) -> PreTrainedModel:
    """Random fp32 weights, built on the device (accelerate's bf16 autocast computes in bf16)."""
    torch.manual_seed(0)
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


# Each stage: (the module trained, micro_loss(module, ids) -> loss, FLOPs per micro-batch from its ids' shape)
Stage = tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor], float]


def sft_stage(model: PreTrainedModel, shape: Shape) -> Stage:
    def loss(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(ids)
        nll, count = module(ids, mask, mask)
        return nll / count

    lm, _ = passes(model)
    return NextTokenLoss(model), loss, shape.micro_batch * shape.seq_len * lm.flops(shape.seq_len, trained=True)


class ScalarHead(nn.Module):
    """The backbone with a scalar head read at each row's last token (a causal_lm reward model)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.backbone = lm_parts(model)[0]
        self.head = zero_head(model.config.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(ids)
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return fp32_linear(self.head, hidden[torch.arange(len(ids), device=ids.device), last_index(mask)]).squeeze(-1)


def reward_stage(model: PreTrainedModel, shape: Shape) -> Stage:
    def loss(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        rewards = module(ids)  # rows: the chosen half, then the rejected half
        return bradley_terry_loss(*rewards.chunk(2))[0]

    _, body = passes(model)
    return ScalarHead(model), loss, shape.micro_batch * shape.seq_len * body.flops(shape.seq_len, trained=True)


def sequence_logprobs(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Σ log π of each row's second half (the response), (B,)."""
    mask = torch.ones_like(ids)
    response = torch.zeros_like(ids)
    response[:, ids.shape[1] // 2 :] = 1
    logprobs, trained = target_logprobs(*lm_parts(module), ids, mask, response)
    return torch.zeros(len(ids), device=ids.device).index_add(0, trained.nonzero()[:, 0], logprobs)


class PolicyLM(nn.Module):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.lm = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return sequence_logprobs(self.lm, ids)


def dpo_stage(model: PreTrainedModel, shape: Shape) -> Stage:
    def loss(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            reference = module(ids)  # the policy's own log-probs: the first step's reference
        ratios = module(ids) - reference
        return sigmoid(
            *ratios.chunk(2), beta=0.1, label_smoothing=0.0, reference_point=torch.zeros((), device=ids.device)
        )[0].mean()

    lm, _ = passes(model)
    per_token = lm.flops(shape.seq_len, trained=True) + lm.flops(shape.seq_len, trained=False)
    return PolicyLM(model), loss, shape.micro_batch * shape.seq_len * per_token


def ppo_stage(model: PreTrainedModel, shape: Shape) -> Stage:
    def loss(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(ids)
        scored = torch.zeros_like(ids[:, 1:], dtype=torch.bool)
        scored[:, ids.shape[1] // 2 - 1 :] = True  # targets in the response half
        with torch.no_grad():
            old_logprobs, old_values, _ = module(ids, mask, scored)
        logprobs, values, _ = module(ids, mask, scored)
        advantages = torch.randn_like(old_logprobs)
        policy, _ = clipped_surrogate(logprobs - old_logprobs, advantages, 0.2)
        value, _ = clipped_value_loss(values, old_values, old_values + advantages, 0.2)
        return policy.mean() + 0.1 * value.mean()

    lm, _ = passes(model)
    per_token = lm.flops(shape.seq_len, trained=True) + lm.flops(shape.seq_len, trained=False)
    return (
        ActorCritic(model, None, zero_head(model.config.hidden_size), 1.0),
        loss,
        (shape.micro_batch * shape.seq_len * per_token),
    )


STAGES = {"sft": sft_stage, "reward": reward_stage, "dpo": dpo_stage, "ppo": ppo_stage}


def time_training(
    accelerator: Accelerator, config: PretrainedConfig, name: str, shape: Shape, peak: float | None
) -> dict[str, float | None]:
    """`shape.steps` timed optimizer steps of stage `name`: tokens/s, TFLOP/s, MFU, peak memory."""
    device = accelerator.device
    reset_memory(device)
    module, micro_loss, micro_flops = STAGES[name](new_model(config, device), shape)
    settings = TrainSettings(learning_rate=1e-5, lr_schedule="constant", output_dir="unused")
    optimizer, scheduler = build_optimizer(module, settings, shape.steps + shape.warmup)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    batches = [random_ids(shape.micro_batch, shape.seq_len, config.vocab_size, device) for _ in range(shape.accum)]
    losses = [partial(micro_loss, module, ids) for ids in batches]
    step = partial(optimizer_step, accelerator, module, optimizer, scheduler, settings.max_grad_norm, losses)
    for _ in range(shape.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(shape.steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = shape.steps * shape.accum * shape.micro_batch * shape.seq_len
    flops = shape.steps * shape.accum * micro_flops / seconds
    accelerator.free_memory(module, optimizer, scheduler)
    return {
        "tokens_per_s": tokens / seconds,
        "step_s": seconds / shape.steps,
        "tflops": flops / 1e12,
        "mfu": flops / peak if peak else None,
        "peak_memory_gib": peak_memory_gib(device),
    }


def time_generation(config: PretrainedConfig, shape: Shape, device: torch.device) -> dict[str, float | None]:
    """HF `generate` with sampling and KV cache, bf16 weights: new tokens per second."""
    reset_memory(device)
    model = new_model(config, device).to(torch.bfloat16).eval()
    prompts = random_ids(shape.gen_batch, shape.gen_prompt, config.vocab_size, device)
    settings = {"do_sample": True, "top_k": 0, "top_p": 1.0, "eos_token_id": None, "pad_token_id": 0}
    with torch.no_grad():
        model.generate(prompts, max_new_tokens=4, **settings)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(prompts, max_new_tokens=shape.gen_tokens, min_new_tokens=shape.gen_tokens, **settings)
        synchronize(device)
    seconds = time.perf_counter() - start
    new_tokens = out[:, prompts.shape[1] :].numel()
    del model
    return {"tokens_per_s": new_tokens / seconds, "seconds": seconds, "peak_memory_gib": peak_memory_gib(device)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=MODEL_CONFIG, help="a transformers config.json (random weights)")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer model and tiny batches, on the CPU")
    parser.add_argument("--output-dir", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    parser.add_argument("--stages", default="sft,reward,dpo,ppo,generate")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--gen-batch", type=int, default=64)
    parser.add_argument("--gen-prompt", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not known")
    args = parser.parse_args()
    if args.smoke:
        args.seq_len, args.micro_batch, args.accum, args.steps, args.warmup = 32, 2, 2, 2, 1
        args.gen_batch, args.gen_prompt, args.gen_tokens = 2, 8, 8
    return args


def main() -> None:
    args = parse_args()
    config = AutoConfig.from_pretrained(args.config)
    if args.smoke:
        for key, value in SMOKE_SHAPE.items():
            setattr(config, key, value)
    accelerator = Accelerator(mixed_precision="bf16", cpu=args.smoke)
    device = accelerator.device
    shape = Shape(args.seq_len, args.micro_batch, args.accum, args.steps, args.warmup, args.gen_batch,
                  args.gen_prompt, args.gen_tokens)  # fmt: skip
    name, peak = peak_flops(device, args.peak_tflops)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    record: dict = {
        "device": name,
        "peak_tflops": peak / 1e12 if peak else None,
        "model": {"config": str(args.config), "smoke": args.smoke, "parameters": parameters},
        "shape": asdict(shape),
        "versions": {p: version(p) for p in ("torch", "transformers", "accelerate", "peft")},
        "stages": {},
    }
    for stage in args.stages.split(","):
        if stage == "generate":
            result = time_generation(config, shape, device)
        else:
            result = time_training(accelerator, config, stage, shape, peak)
        record["stages"][stage] = result
        accelerator.print(f"{stage}: {json.dumps(result)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / ("gpu-smoke.json" if args.smoke else "gpu.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    accelerator.print(f"wrote {out}")


if __name__ == "__main__":
    main()
