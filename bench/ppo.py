"""PPO throughput and memory: `rlhfkit ppo` against TRL 1.12.0's `PPOTrainer`, on this machine's CPU, in one run.

Both trainers tune the same policy checkpoint (loaded by rlhfkit's loader: the same weights and tokenizer) on
the same prompts (the packaged `demo-prompts`), in fp32 with the same thread count, sampling 32 response
tokens at temperature 1.0, with the same rollout batch (episodes per PPO step), mini-batch (episodes per
optimizer step), PPO epochs, KL coefficient, learning rate and number of PPO steps. Both score with one
untrained reward model built once per run (rlhfkit's `RewardModel` on the policy's backbone, a linear head at
the last token; TRL gets the same backbone and head as an `AutoModelForSequenceClassification`) and train a
separate critic initialised from it (TRL's design; rlhfkit's `critic: reward`).

TRL's PPO lives in `trl.experimental.ppo` and is compared at version 1.12.0, installed in its own venv
(`--trl-python`, default /work/venv-trl112/bin/python); the rlhfkit side runs in the interpreter running this
script. Each trainer runs in a fresh process, one after the other (`--rounds N` alternates the order). The
timed window spans the PPO steps (rollout, scoring, advantages, `ppo_epochs` x mini-batches updates) after
`--warmup` steps, from per-step wall-clock stamps (rlhfkit's `metrics.jsonl` with log_every=1, a TRL
`TrainerCallback.on_step_end`, which TRL's PPO loop fires once per PPO step). Peak memory is each process's
peak resident set size up to the end of the last step (`getrusage` ru_maxrss, loading included).

    python bench/ppo.py                     # tiny-austen, 1 warm-up + 3 timed PPO steps of 64 episodes
    python bench/ppo.py --model smollm2-135m-instruct --batch-size 16 --mini-batch-size 8 --warmup 1 --steps 1

Setting up TRL's venv (a CPU torch first, so pip never pulls a CUDA build; TRL 1.12.0 resolves transformers
5.23.0 and accelerate 1.15.0; rlhfkit without its deps, for its loaders):

    python3 -m venv /work/venv-trl112
    /work/venv-trl112/bin/pip install torch==2.13.0    # the +cpu wheel
    /work/venv-trl112/bin/pip install trl==1.12.0 peft vaderSentiment
    /work/venv-trl112/bin/pip install -e . --no-deps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Memory,
    RunSettings,
    add_run_args,
    check_run_args,
    environment,
    median_run,
    print_table,
    print_verdict,
    rlhfkit_step_times,
    run_rounds,
    step_clock,
    timed_window,
    trl_args,
    trl_overrides,
    versions,
    warn_if_busy,
    write_record,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "ppo.json"
DEFAULT_TRL_PYTHON = "/work/venv-trl112/bin/python"
TRL_VERSION = "1.12.0"
TARGET_RATIO = 2.0
HEAD = "reward"  # the reward model's one head


@dataclass(frozen=True)
class Settings(RunSettings):
    """What both trainers share: the common run settings (`data`: the prompts; `batch_size`: episodes per PPO
    step; `max_length`: the longest prompt plus the response length, for the record) and PPO's own."""

    response_length: int
    temperature: float
    mini_batch_size: int  # episodes per optimizer step
    ppo_epochs: int
    kl_coef: float
    reward_dir: str  # the untrained reward model both sides score with and initialise their critic from
    trl_python: str

    @property
    def mini_batches(self) -> int:
        return self.batch_size // self.mini_batch_size


@dataclass(frozen=True)
class Sampled:
    """One rollout's generation call."""

    tokens: float  # mean sampled tokens per episode, up to and including EOS
    width: int  # padded response width: the response positions every later forward computes
    seconds: float


@dataclass(frozen=True)
class SideResult:
    """One trainer's measurement over the timed window."""

    trainer: str
    seconds: float
    episodes: int
    episodes_per_s: float
    peak_rss_mib: float  # of the whole process up to the end of the last step, loading included
    rss_after_first_step_mib: float
    response_tokens: float  # mean sampled tokens per episode in the window, up to and including EOS
    generated_width: float  # mean padded response width of the window's rollouts (the positions computed)
    rollout_seconds: float  # mean per timed step: from the previous step's end to the advantages (all but updates)
    sampling_seconds: float  # mean per timed step: the generation call alone (part of the rollout)
    step_seconds: list[float]
    versions: dict[str, str] = field(default_factory=dict)  # of the venv it ran in


def measure(
    trainer: str,
    times: list[float],
    rollouts: list[Sampled],
    rollout_ends: list[float],
    settings: Settings,
    memory: Memory,
) -> SideResult:
    """Throughput between the end of step `warmup` and the end of step `warmup + steps` (1-based steps).

    `rollouts`: what each step's generation call sampled, in step order; `rollout_ends`: wall-clock stamps,
    among them the end of each step's rollout (the last stamp before the step's end is taken).
    """
    seconds, step_seconds = timed_window(trainer, times, len(rollouts), settings)
    window = rollouts[settings.warmup : settings.total_steps]
    timed = range(settings.warmup, settings.total_steps)  # 0-based indices of the timed steps
    rollout_seconds = [max(t for t in rollout_ends if t < times[i]) - times[i - 1] for i in timed]
    episodes = settings.batch_size * settings.steps
    return SideResult(
        trainer=trainer,
        seconds=seconds,
        episodes=episodes,
        episodes_per_s=episodes / seconds,
        peak_rss_mib=memory.peak_mib,
        rss_after_first_step_mib=memory.after_first_step_mib,
        response_tokens=statistics.fmean(s.tokens for s in window),
        generated_width=statistics.fmean(s.width for s in window),
        rollout_seconds=statistics.fmean(rollout_seconds),
        sampling_seconds=statistics.fmean(s.seconds for s in window),
        step_seconds=step_seconds,
        versions=versions(),
    )


def timed_generation(
    generate: Callable[..., Any], log: list[Sampled], stats: Callable[..., tuple[float, int]]
) -> Callable[..., Any]:
    """`generate`, appending to `log` the `stats` (tokens, width) of what it returns, given its arguments too."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = generate(*args, **kwargs)
        seconds = time.perf_counter() - started
        log.append(Sampled(*stats(result, *args), seconds=seconds))
        return result

    return wrapped


def stamped(fn: Callable[..., Any], stamps: list[float]) -> Callable[..., Any]:
    """`fn`, appending the wall-clock time to `stamps` each time it returns."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        stamps.append(time.time())
        return result

    return wrapped


def response_tokens(responses: torch.Tensor, eos_id: int, pad_id: int) -> float:
    """Mean sampled tokens per row of (B, T) responses: up to and including the first EOS, else up to padding."""
    stop = (responses == eos_id).int()
    after_eos = (stop.cumsum(1) - stop) > 0  # positions after the first EOS
    return ((responses != pad_id) & ~after_eos).sum(1).float().mean().item()


# --- shared inputs, built once per run in the parent (rlhfkit's venv) ---------------------------------------


def write_prompts(path: Path) -> Path:
    """The packaged `demo-prompts` ({"prompt": text} rows), copied as they are."""
    from rlhfkit import assets

    path.write_text(Path(assets.resolve("demo-prompts")).read_text())
    return path


def longest_prompt(model_path: str, prompts: Path) -> int:
    from rlhfkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    return max(len(tokenizer(json.loads(line)["prompt"])["input_ids"]) for line in prompts.read_text().splitlines())


def build_reward_model(model_path: str, out: Path, seed: int) -> Path:
    """An untrained rlhfkit reward model on the policy's backbone: one linear head at the last real token."""
    from rlhfkit.models.reward import RewardModel

    torch.manual_seed(seed)
    return RewardModel.from_pretrained(model_path, heads=[HEAD], kind="causal_lm").save(out)


# --- rlhfkit --------------------------------------------------------------------------------------------------


def run_rlhfkit(settings: Settings) -> SideResult:
    """`rlhfkit ppo` with its defaults, a metrics row (timestamp) per PPO step, no held-out evaluation."""
    from rlhfkit.config import load_config
    from rlhfkit.ppo import rollout, train
    from rlhfkit.ppo.train import PPOConfig, ppo

    torch.set_num_threads(settings.threads)
    memory = Memory()
    rollouts: list[Sampled] = []
    rollout_ends: list[float] = []
    recorded_sample = timed_generation(
        rollout.sample,
        rollouts,
        lambda samples, *_: (samples.response_mask.sum(1).float().mean().item(), samples.response_ids.shape[1]),
    )

    class MemoryLog(train.MetricsLog):
        """rlhfkit's metrics log, noting the memory at each row: each follows a finished PPO step."""

        def write(self, step: int, metrics: dict[str, float]) -> None:
            super().write(step, metrics)
            memory.step_done()

    with tempfile.TemporaryDirectory() as out:
        fields = {
            "model": settings.model_path,
            "prompts": settings.data,
            "rewards": [{"source": settings.reward_dir, "weight": 1.0}],
            "critic": "reward",  # TRL's critic: a copy of the reward model
            "sampling": {"max_new_tokens": settings.response_length, "temperature": settings.temperature},
            "batch_size": settings.batch_size,
            "mini_batch_size": settings.mini_batch_size,
            "micro_batch_size": settings.mini_batch_size,  # one forward/backward per optimizer step, as TRL
            "ppo_epochs": settings.ppo_epochs,
            "max_steps": settings.total_steps,
            "learning_rate": settings.learning_rate,
            "kl_coef": settings.kl_coef,
            "output_dir": out,
            "log_every": 1,
            "num_threads": settings.threads,
            "seed": settings.seed,
        }
        config_file = Path(out) / "bench.yaml"
        config_file.write_text(json.dumps(fields))  # JSON is YAML
        config = load_config(PPOConfig, config_file, list(settings.rlhfkit_set))
        with (
            mock.patch.object(rollout, "sample", recorded_sample),
            mock.patch.object(train, "collect_rollout", stamped(train.collect_rollout, rollout_ends)),
            mock.patch.object(train, "MetricsLog", MemoryLog),
        ):
            ppo(config)
        times = rlhfkit_step_times(out)
    return measure("rlhfkit", times, rollouts, rollout_ends, settings, memory)


# --- TRL (runs in TRL's venv) ---------------------------------------------------------------------------------


def run_trl(settings: Settings) -> SideResult:
    """TRL's `PPOTrainer` in its own venv: this script again, under `settings.trl_python`."""
    with tempfile.TemporaryDirectory() as tmp:
        settings_file, result_file = Path(tmp) / "settings.json", Path(tmp) / "result.json"
        settings_file.write_text(json.dumps(asdict(settings)))
        command = [settings.trl_python, __file__, "--trl-worker", str(settings_file), str(result_file)]
        subprocess.run(command, check=True)
        return SideResult(**json.loads(result_file.read_text()))


def trl_worker(settings_file: Path, result_file: Path) -> None:
    raw = json.loads(settings_file.read_text())
    settings = Settings(**raw | {key: tuple(raw[key]) for key in ("rlhfkit_set", "trl_set")})
    result_file.write_text(json.dumps(asdict(train_trl(settings))))


def train_trl(settings: Settings) -> SideResult:
    """TRL's `PPOTrainer` with its defaults, minus bf16, gradient checkpointing, logging, saving, eval and
    sample generations."""
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer

    from rlhfkit.models.loading import load_model, load_tokenizer

    memory = Memory()
    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path, padding_side="left")  # TRL generates from left-padded queries
    policy = load_model(settings.model_path, tokenizer)
    head = load_file(Path(settings.reward_dir) / "reward_head.safetensors")

    def reward_model() -> Any:
        """rlhfkit's reward model as TRL takes it: the same backbone weights; its head as `score` (no bias:
        rlhfkit's starts at zero)."""
        model = AutoModelForSequenceClassification.from_pretrained(
            settings.reward_dir, num_labels=1, dtype=torch.float32
        )
        if head["bias"].abs().max() > 0:
            raise ValueError("the reward head has a bias; TRL's `score` layer has none")
        model.score.weight.data.copy_(head["weight"])
        return model

    prompts = [json.loads(line)["prompt"] for line in Path(settings.data).read_text().splitlines()]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
    clock = step_clock(memory.step_done)
    rollouts: list[Sampled] = []

    def stats(result: tuple[torch.Tensor, ...], model: Any, queries: torch.Tensor, *_: Any) -> tuple[float, int]:
        responses = result[0][:, queries.shape[1] :]  # (B, context + response) -> the responses
        return response_tokens(responses, tokenizer.eos_token_id, tokenizer.pad_token_id), responses.shape[1]

    recorded_generation = timed_generation(ppo_trainer.batch_generation, rollouts, stats)
    rollout_ends: list[float] = []  # TRL whitens the advantages last thing in its rollout
    whiten = stamped(ppo_trainer.masked_whiten, rollout_ends)

    with tempfile.TemporaryDirectory() as out:
        fields = {
            "total_episodes": settings.batch_size * settings.total_steps,
            "num_mini_batches": settings.mini_batches,
            "num_ppo_epochs": settings.ppo_epochs,
            # the whole rollout batch per device; TRL's micro batch (one forward/backward and optimizer step)
            # is then the mini-batch. Gradient accumulation stays 1: TRL's accelerator would otherwise skip
            # optimizer steps across mini-batches.
            "local_rollout_forward_batch_size": settings.batch_size,
            "response_length": settings.response_length,
            "temperature": settings.temperature,
            "stop_token": "eos",  # stop sampling at EOS, as rlhfkit does
            "kl_coef": settings.kl_coef,
            "num_sample_generations": 0,
        }
        base = trl_args(out, settings, settings.batch_size, {})
        del base["max_length"]  # not a PPOConfig field: the length is the prompt's plus `response_length`
        args = PPOConfig(**base | fields | trl_overrides(settings.trl_set))
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,  # TRL's default: a frozen deep copy of the policy
            reward_model=reward_model(),
            value_model=reward_model(),
            train_dataset=dataset,
            callbacks=[clock],
        )
        with (
            mock.patch.object(ppo_trainer, "batch_generation", recorded_generation),
            mock.patch.object(ppo_trainer, "masked_whiten", whiten),
        ):
            trainer.train()
    return measure("TRL", clock.times, rollouts, rollout_ends, settings, memory)


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


# --- command line and reporting -------------------------------------------------------------------------------


def report(console: Console, results: dict[str, SideResult], ratio: float) -> None:
    rows = [
        [
            name,
            f"{r.episodes_per_s:.2f}",
            f"{r.seconds / len(r.step_seconds):.2f}",
            f"{r.rollout_seconds:.2f}",
            f"{r.sampling_seconds:.2f}",
            f"{r.response_tokens:.1f}",
            f"{r.generated_width:.1f}",
            f"{r.peak_rss_mib:.0f}",
            f"{r.rss_after_first_step_mib:.0f}",
        ]
        for name, r in results.items()
    ]
    columns = ["trainer", "episodes/s", "s/step", "rollout s", "sampling s", "resp. tokens", "width"]
    columns += ["peak RSS MiB", "RSS step 1 MiB"]
    print_table(console, "PPO throughput (timed PPO steps only) and memory", columns, rows)
    print_verdict(console, "episodes/s", ratio, TARGET_RATIO)
    memory_ratio = results["rlhfkit"].peak_rss_mib / results["TRL"].peak_rss_mib
    verdict = "[green]met" if memory_ratio <= 1 else "[red]not met"
    console.print(f"rlhfkit / TRL peak RSS: [bold]{memory_ratio:.2f}x[/] (target <= 1x: {verdict}[/])")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-austen", help="rlhfkit model name, local path or hub id")
    parser.add_argument("--batch-size", type=int, default=64, help="episodes per PPO step (rollout batch)")
    parser.add_argument("--mini-batch-size", type=int, default=16, help="episodes per optimizer step")
    parser.add_argument("--ppo-epochs", type=int, default=4, help="passes over each rollout batch")
    parser.add_argument("--response-length", type=int, default=32, help="sampled tokens per response, at most")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=3e-6)
    parser.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON, help=f"a python with trl=={TRL_VERSION}")
    add_run_args(parser, "PPOConfig", "critic=policy", "whiten_rewards=true", rounds=True)
    parser.set_defaults(warmup=1, steps=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument("--trl-worker", nargs=2, type=Path, help=argparse.SUPPRESS)  # internal: TRL's side
    args = parser.parse_args()
    if args.trl_worker:
        return args
    check_run_args(parser, args)
    if args.batch_size % args.mini_batch_size:
        parser.error("--batch-size must be a multiple of --mini-batch-size")
    return args


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs

    args = parse_args()
    if args.trl_worker:
        trl_worker(*args.trl_worker)
        return
    from rlhfkit.models.loading import resolve_model_path

    console = Console(width=max(Console().width, 120))  # the table's nine columns
    trl_version = subprocess.run(
        [args.trl_python, "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if trl_version != TRL_VERSION:
        console.print(f"[yellow]{args.trl_python} has trl {trl_version}, not {TRL_VERSION}")
    with tempfile.TemporaryDirectory() as tmp:
        model_path = resolve_model_path(args.model)  # converts smollm2 once, before anything is timed
        prompts = write_prompts(Path(tmp) / "prompts.jsonl")
        settings = Settings(
            model=args.model,
            model_path=model_path,
            data=str(prompts),
            max_length=longest_prompt(model_path, prompts) + args.response_length,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            warmup=args.warmup,
            steps=args.steps,
            threads=args.threads,
            seed=args.seed,
            rlhfkit_set=tuple(args.rlhfkit_set),
            trl_set=tuple(args.trl_set),
            response_length=args.response_length,
            temperature=args.temperature,
            mini_batch_size=args.mini_batch_size,
            ppo_epochs=args.ppo_epochs,
            kl_coef=args.kl_coef,
            reward_dir=str(build_reward_model(model_path, Path(tmp) / "reward-model", args.seed)),
            trl_python=args.trl_python,
        )
        load_before = os.getloadavg()
        warn_if_busy(console, load_before[0], settings.threads)
        runs = run_rounds(console, RUNNERS, settings, args.rounds)
    results = {name: median_run(rs, lambda r: r.episodes_per_s) for name, rs in runs.items()}
    ratio = results["rlhfkit"].episodes_per_s / results["TRL"].episodes_per_s
    report(console, results, ratio)
    if args.rounds > 1:
        per_round = [r.episodes_per_s / t.episodes_per_s for r, t in zip(runs["rlhfkit"], runs["TRL"], strict=True)]
        console.print("per round: " + ", ".join(f"{x:.2f}x" for x in per_round))
    env = environment(load_before)
    env["versions"] = {"rlhfkit side": env["versions"], "TRL side": results["TRL"].versions}
    record = {
        "benchmark": "ppo",
        "ratio_episodes_per_s": ratio,
        "ratio_peak_rss": results["rlhfkit"].peak_rss_mib / results["TRL"].peak_rss_mib,
        "target_ratio": TARGET_RATIO,
        "settings": asdict(settings)
        | {"data": "demo-prompts", "reward_dir": "untrained RewardModel on the policy backbone (build_reward_model)"},
        "dtype": "float32",
        "device": "cpu",
        "isolation": f"one fresh process per trainer run, {args.rounds} round(s), alternating order; "
        f"TRL in {args.trl_python}",
        "episodes_per_s": {name: r.episodes_per_s for name, r in results.items()},
        "peak_rss_mib": {name: r.peak_rss_mib for name, r in results.items()},
        "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
        **env,
    }
    write_record(console, args.output, record)


if __name__ == "__main__":
    main()
