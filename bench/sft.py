"""SFT training throughput: `rlhfkit sft` against TRL's `SFTTrainer`, on this machine's CPU, in one run.

Both trainers tune the same checkpoint (loaded by rlhfkit's loader, so the same weights and tokenizer) on the
packaged `demo-sft` prompt/completion data, in fp32 with the same thread count, sequence length, batch size,
learning rate and number of optimizer steps, with the loss on completion tokens only and no packing. Each
trainer keeps its own defaults otherwise (rlhfkit: length-grouped batches; TRL: see bench/README.md).

Each trainer runs in a fresh subprocess (spawned one after the other, never at the same time). The timed
window spans the optimizer steps after `--warmup` steps: from the end of step `warmup` to the end of step
`warmup + steps`, read from per-step wall-clock timestamps (rlhfkit: `metrics.jsonl` with log_every=1;
TRL: a `TrainerCallback.on_step_end`). Evaluation, saving, data preparation and start-up are outside it.

    pip install -e ".[bench]"
    python bench/sft.py                      # tiny-austen, 5 warm-up + 30 timed steps
    python bench/sft.py --model smollm2-135m-instruct --steps 8 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib.metadata import version
from itertools import pairwise
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import yaml
from rich.console import Console
from rich.table import Table

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "sft.json"
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Settings:
    """What both trainers share."""

    model: str  # the name given on the command line
    model_path: str  # its resolved checkpoint directory, loaded by both sides
    data: str
    max_length: int
    batch_size: int
    learning_rate: float
    warmup: int
    steps: int
    threads: int
    seed: int
    rlhfkit_set: tuple[str, ...]  # extra `key=value` overrides of rlhfkit's SFTConfig (ablations)
    trl_set: tuple[str, ...]  # extra `key=value` keyword arguments of TRL's SFTConfig (ablations)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


@dataclass(frozen=True)
class BatchStats:
    """One training batch as the model saw it."""

    samples: int
    targets: int  # trained target tokens (completion tokens plus EOS)
    slots: int  # batch size x padded width: the token positions the model computes


@dataclass(frozen=True)
class SideResult:
    """One trainer's measurement over the timed window."""

    trainer: str
    seconds: float
    samples: int
    target_tokens: int
    samples_per_s: float
    target_tokens_per_s: float
    padded_width: float  # mean padded sequence length of the timed batches
    peak_rss_mib: float  # of the whole subprocess, loading included
    step_seconds: list[float]


def measure(trainer: str, times: list[float], batches: list[BatchStats], settings: Settings) -> SideResult:
    """Throughput between the end of step `warmup` and the end of step `warmup + steps` (1-based steps)."""
    if len(times) != settings.total_steps or len(batches) < settings.total_steps:
        raise RuntimeError(
            f"{trainer}: got {len(times)} step times and {len(batches)} batches, expected {settings.total_steps}"
        )
    timed = batches[settings.warmup : settings.total_steps]
    seconds = times[-1] - times[settings.warmup - 1]
    samples = sum(b.samples for b in timed)
    targets = sum(b.targets for b in timed)
    return SideResult(
        trainer=trainer,
        seconds=seconds,
        samples=samples,
        target_tokens=targets,
        samples_per_s=samples / seconds,
        target_tokens_per_s=targets / seconds,
        padded_width=sum(b.slots for b in timed) / samples,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        step_seconds=[b - a for a, b in pairwise(times[settings.warmup - 1 :])],
    )


def recording(
    collate: Callable[..., Any], log: list[BatchStats], stats: Callable[[Any], BatchStats]
) -> Callable[..., Any]:
    """`collate`, appending the stats of every batch it builds to `log` (batches are built in step order)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        batch = collate(*args, **kwargs)
        log.append(stats(batch))
        return batch

    return wrapped


def trl_batch_stats(batch: dict[str, torch.Tensor]) -> BatchStats:
    ids, labels = batch["input_ids"], batch["labels"]
    return BatchStats(ids.shape[0], int((labels[:, 1:] != -100).sum()), ids.numel())


def rlhfkit_batch_stats(batch: Any) -> BatchStats:
    ids = batch.input_ids
    return BatchStats(ids.shape[0], int(batch.loss_mask[:, 1:].sum()), ids.numel())


def run_rlhfkit(settings: Settings) -> SideResult:
    """`rlhfkit sft` with its defaults, no held-out split, a timestamp per optimizer step.

    The config goes through a YAML file and `--set`-style overrides, as on the command line.
    """
    from rlhfkit.config import load_config
    from rlhfkit.sft.train import SFTConfig, sft
    from rlhfkit.training import lm_trainer

    torch.set_num_threads(settings.threads)
    batches: list[BatchStats] = []
    with tempfile.TemporaryDirectory() as out:
        base = {
            "model": settings.model_path,
            "data": settings.data,
            "max_length": settings.max_length,
            "batch_size": settings.batch_size,
            "micro_batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "max_steps": settings.total_steps,
            "log_every": 1,
            "eval_every": 0,
            "eval_fraction": 0.0,  # no held-out split: no evaluation at all, and TRL's 1000 training rows
            "output_dir": out,
            "seed": settings.seed,
            "num_threads": settings.threads,
        }
        config_file = Path(out) / "bench.yaml"
        config_file.write_text(yaml.safe_dump(base))
        config = load_config(SFTConfig, config_file, list(settings.rlhfkit_set))
        pad = recording(lm_trainer.pad_batch, batches, rlhfkit_batch_stats)
        with mock.patch.object(lm_trainer, "pad_batch", pad):
            sft(config)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return measure("rlhfkit", [r["time"] for r in rows if r["step"] >= 1], batches, settings)


def trl_overrides(texts: tuple[str, ...]) -> dict[str, Any]:
    """`key=value` strings (values read as YAML) as keyword arguments of TRL's `SFTConfig`."""
    from rlhfkit.config import parse_override

    return {".".join(keys): value for keys, value in map(parse_override, texts)}


def run_trl(settings: Settings) -> SideResult:
    """TRL's `SFTTrainer` with its defaults, minus bf16, gradient checkpointing, logging, saving and eval."""
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rlhfkit import assets
    from rlhfkit.models.loading import load_model, load_tokenizer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.time())

    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path)
    model = load_model(settings.model_path, tokenizer)
    dataset = load_dataset("json", data_files=assets.resolve(settings.data), split="train")
    clock = StepClock()
    batches: list[BatchStats] = []
    with tempfile.TemporaryDirectory() as out:
        base = {
            "output_dir": out,
            "max_length": settings.max_length,
            "packing": False,
            "padding_free": False,
            "completion_only_loss": True,  # TRL's default for prompt/completion data, stated
            "per_device_train_batch_size": settings.batch_size,
            "gradient_accumulation_steps": 1,
            "learning_rate": settings.learning_rate,
            "max_steps": settings.total_steps,
            "seed": settings.seed,
            "bf16": False,
            "fp16": False,
            "gradient_checkpointing": False,
            "use_cpu": True,
            "report_to": [],
            "save_strategy": "no",
            "eval_strategy": "no",
            "logging_steps": settings.total_steps + 1,
            "dataloader_num_workers": 0,
        }
        args = SFTConfig(**base | trl_overrides(settings.trl_set))
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
        )
        trainer.data_collator = recording(trainer.data_collator, batches, trl_batch_stats)
        trainer.train()
    return measure("TRL", clock.times, batches, settings)


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


def in_subprocess(runner: Callable[[Settings], SideResult], settings: Settings) -> SideResult:
    """Run one trainer in a fresh interpreter, so neither inherits the other's memory or thread state."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(runner, settings).result()


def round_order(round_index: int) -> list[str]:
    """TRL first in even rounds, rlhfkit first in odd ones."""
    order = list(RUNNERS)
    return order if round_index % 2 == 0 else order[::-1]


def versions() -> dict[str, str]:
    packages = ["rlhfkit", "torch", "transformers", "trl", "accelerate", "datasets"]
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


def round_ratios(results: dict[str, list[SideResult]]) -> list[float]:
    """rlhfkit / TRL samples/s of each round: back-to-back runs that saw about the same machine load."""
    return [rl.samples_per_s / trl.samples_per_s for rl, trl in zip(results["rlhfkit"], results["TRL"], strict=True)]


def report(console: Console, results: dict[str, list[SideResult]], ratio: float) -> None:
    table = Table(title="SFT training throughput (timed steps only; median run per trainer)")
    for column in ["trainer", "samples/s", "target tokens/s", "padded width", "s/step", "peak RSS MiB"]:
        table.add_column(column, justify="left" if column == "trainer" else "right")
    for name, runs in results.items():
        best = median_run(runs)
        table.add_row(
            name,
            f"{best.samples_per_s:.2f}",
            f"{best.target_tokens_per_s:.0f}",
            f"{best.padded_width:.1f}",
            f"{best.seconds / len(best.step_seconds):.3f}",
            f"{best.peak_rss_mib:.0f}",
        )
    console.print(table)
    verdict = "[green]met" if ratio >= TARGET_RATIO else "[red]not met"
    console.print(f"rlhfkit / TRL samples/s: [bold]{ratio:.2f}x[/] (target >= {TARGET_RATIO}x: {verdict}[/])")
    if len(results["TRL"]) > 1:
        console.print("per round: " + ", ".join(f"{r:.2f}x" for r in round_ratios(results)))


def median_run(runs: list[SideResult]) -> SideResult:
    """The run with the median samples/s (the lower middle one for an even count)."""
    ranked = sorted(runs, key=lambda r: r.samples_per_s)
    return ranked[(len(ranked) - 1) // 2]


def warn_if_busy(console: Console, load: float, threads: int) -> None:
    """Other work on the cores makes the numbers low and noisy; oversubscribed torch threads, much worse."""
    cpus = os.cpu_count() or 1
    if load > cpus - threads + 0.5:
        console.print(
            f"[yellow]load average {load:.1f} on {cpus} CPUs before starting: other processes compete "
            f"with the {threads} torch thread(s); fewer --threads than free cores keeps timings sane"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-austen", help="rlhfkit model name, local path or hub id")
    parser.add_argument("--data", default="demo-sft", help="prompt/completion JSONL (default: packaged demo)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch = micro batch (no accumulation)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first (at least 1)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads on both sides")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both trainers, alternating who goes first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rlhfkit-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of rlhfkit's SFTConfig, e.g. group_by_length=false (repeatable)",
    )
    parser.add_argument(
        "--trl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of TRL's SFTConfig, e.g. train_sampling_strategy=group_by_length (repeatable)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    return args


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs
    from rlhfkit.models.loading import resolve_model_path

    args = parse_args()
    console = Console()
    settings = Settings(
        model=args.model,
        model_path=resolve_model_path(args.model),  # converts smollm2 once, before anything is timed
        data=args.data,
        max_length=args.max_length,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup=args.warmup,
        steps=args.steps,
        threads=args.threads,
        seed=args.seed,
        rlhfkit_set=tuple(args.rlhfkit_set),
        trl_set=tuple(args.trl_set),
    )
    load_before = os.getloadavg()
    warn_if_busy(console, load_before[0], settings.threads)
    results: dict[str, list[SideResult]] = {name: [] for name in RUNNERS}
    for index in range(args.rounds):
        for name in round_order(index):
            console.rule(f"round {index + 1}/{args.rounds}: {name}")
            results[name].append(in_subprocess(RUNNERS[name], settings))
    ratio = median_run(results["rlhfkit"]).samples_per_s / median_run(results["TRL"]).samples_per_s
    report(console, results, ratio)
    record = {
        "benchmark": "sft",
        "ratio_samples_per_s": ratio,  # of the median runs
        "round_ratios": round_ratios(results),
        "target_ratio": TARGET_RATIO,
        "settings": asdict(settings),
        "dtype": "float32",
        "device": "cpu",
        "isolation": "one spawned subprocess per trainer run, run one after the other",
        "order": [round_order(i) for i in range(args.rounds)],
        "samples_per_s": {name: median_run(runs).samples_per_s for name, runs in results.items()},
        "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        "versions": versions(),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
