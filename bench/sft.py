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
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RunSettings,
    add_run_args,
    check_run_args,
    environment,
    median_run,
    peak_rss_mib,
    print_table,
    print_verdict,
    recording,
    rlhfkit_config,
    rlhfkit_step_times,
    round_order,
    run_fields,
    run_rounds,
    step_clock,
    timed_window,
    trl_args,
    warn_if_busy,
    write_record,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "sft.json"
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Settings(RunSettings):
    """What both trainers share (all of it common to the benchmarks)."""


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
    seconds, step_seconds = timed_window(trainer, times, len(batches), settings)
    timed = batches[settings.warmup : settings.total_steps]
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
        peak_rss_mib=peak_rss_mib(),
        step_seconds=step_seconds,
    )


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
    from rlhfkit.sft.train import SFTConfig, sft
    from rlhfkit.training import lm_trainer

    torch.set_num_threads(settings.threads)
    batches: list[BatchStats] = []
    with tempfile.TemporaryDirectory() as out:
        fields = {"data": settings.data, "batch_size": settings.batch_size, "micro_batch_size": settings.batch_size}
        config = rlhfkit_config(SFTConfig, out, settings, fields)
        pad = recording(lm_trainer.pad_batch, batches, rlhfkit_batch_stats)
        with mock.patch.object(lm_trainer, "pad_batch", pad):
            sft(config)
        times = rlhfkit_step_times(out)
    return measure("rlhfkit", times, batches, settings)


def run_trl(settings: Settings) -> SideResult:
    """TRL's `SFTTrainer` with its defaults, minus bf16, gradient checkpointing, logging, saving and eval."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    from rlhfkit import assets
    from rlhfkit.models.loading import load_model, load_tokenizer

    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path)
    model = load_model(settings.model_path, tokenizer)
    dataset = load_dataset("json", data_files=assets.resolve(settings.data), split="train")
    clock = step_clock()
    batches: list[BatchStats] = []
    with tempfile.TemporaryDirectory() as out:
        fields = {
            "packing": False,
            "padding_free": False,
            "completion_only_loss": True,  # TRL's default for prompt/completion data, stated
        }
        args = SFTConfig(**trl_args(out, settings, settings.batch_size, fields))
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
        )
        trainer.data_collator = recording(trainer.data_collator, batches, trl_batch_stats)
        trainer.train()
    return measure("TRL", clock.times, batches, settings)


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


def samples_per_s(run: SideResult) -> float:
    return run.samples_per_s


def round_ratios(results: dict[str, list[SideResult]]) -> list[float]:
    """rlhfkit / TRL samples/s of each round: back-to-back runs that saw about the same machine load."""
    return [rl.samples_per_s / trl.samples_per_s for rl, trl in zip(results["rlhfkit"], results["TRL"], strict=True)]


def report(console: Console, results: dict[str, list[SideResult]], ratio: float) -> None:
    rows = []
    for name, runs in results.items():
        best = median_run(runs, samples_per_s)
        rows.append(
            [
                name,
                f"{best.samples_per_s:.2f}",
                f"{best.target_tokens_per_s:.0f}",
                f"{best.padded_width:.1f}",
                f"{best.seconds / len(best.step_seconds):.3f}",
                f"{best.peak_rss_mib:.0f}",
            ]
        )
    columns = ["trainer", "samples/s", "target tokens/s", "padded width", "s/step", "peak RSS MiB"]
    print_table(console, "SFT training throughput (timed steps only; median run per trainer)", columns, rows)
    print_verdict(console, "samples/s", ratio, TARGET_RATIO)
    if len(results["TRL"]) > 1:
        console.print("per round: " + ", ".join(f"{r:.2f}x" for r in round_ratios(results)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-austen", help="rlhfkit model name, local path or hub id")
    parser.add_argument("--data", default="demo-sft", help="prompt/completion JSONL (default: packaged demo)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch = micro batch (no accumulation)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    add_run_args(parser, "SFTConfig", "group_by_length=false", "train_sampling_strategy=group_by_length", rounds=True)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    args = parser.parse_args()
    check_run_args(parser, args)
    return args


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs

    args = parse_args()
    console = Console()
    settings = Settings(
        data=args.data,
        **run_fields(args),
    )
    load_before = os.getloadavg()
    warn_if_busy(console, load_before[0], settings.threads)
    results = run_rounds(console, RUNNERS, settings, args.rounds)
    medians = {name: median_run(runs, samples_per_s) for name, runs in results.items()}
    ratio = medians["rlhfkit"].samples_per_s / medians["TRL"].samples_per_s  # of the median runs
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
        "samples_per_s": {name: median_run(runs, samples_per_s).samples_per_s for name, runs in results.items()},
        "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        **environment(load_before),
    }
    write_record(console, args.output, record)


if __name__ == "__main__":
    main()
