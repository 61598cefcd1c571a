"""Machinery shared by the trainer benchmarks in bench/ (sft.py, reward.py, dpo.py).

Each benchmark pits one rlhfkit trainer against its TRL counterpart under the same rules: each side in a
fresh spawned subprocess, a timed window read from per-step wall-clock stamps, the same thread count, and a
JSON record with settings, versions and machine load. Those rules live here once, so the three benchmarks
cannot drift apart in how they measure; each script keeps only what is specific to its trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from itertools import pairwise
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml
from rich.console import Console
from rich.table import Table

TRAINERS = ("TRL", "rlhfkit")  # the run order of even rounds (and of single-round benchmarks)
PACKAGES = ["rlhfkit", "torch", "transformers", "trl", "accelerate", "datasets"]

S = TypeVar("S")
R = TypeVar("R")


@dataclass(frozen=True)
class RunSettings:
    """What both trainers of every benchmark share; each benchmark's `Settings` adds its own fields."""

    model: str  # the name given on the command line
    model_path: str  # its resolved checkpoint directory, loaded by both sides
    data: str  # the training data, JSONL
    max_length: int
    batch_size: int
    learning_rate: float
    warmup: int
    steps: int
    threads: int
    seed: int
    rlhfkit_set: tuple[str, ...]  # extra `key=value` overrides of rlhfkit's config (ablations)
    trl_set: tuple[str, ...]  # extra `key=value` keyword arguments of TRL's config (ablations)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


def run_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The `RunSettings` fields read from the command line (all but `data`, which each benchmark builds)."""
    from rlhfkit.models.loading import resolve_model_path

    return {
        "model": args.model,
        "model_path": resolve_model_path(args.model),  # converts smollm2 once, before anything is timed
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads": args.threads,
        "seed": args.seed,
        "rlhfkit_set": tuple(args.rlhfkit_set),
        "trl_set": tuple(args.trl_set),
    }


# --- running ----------------------------------------------------------------------------------------------


def in_subprocess(runner: Callable[[S], R], settings: S) -> R:
    """Run one trainer in a fresh interpreter, so neither inherits the other's memory or thread state."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(runner, settings).result()


def round_order(round_index: int) -> list[str]:
    """TRL first in even rounds, rlhfkit first in odd ones: neither side always gets the cooler machine."""
    order = list(TRAINERS)
    return order if round_index % 2 == 0 else order[::-1]


def run_rounds(
    console: Console, runners: dict[str, Callable[[S], R]], settings: S, rounds: int, numbered: bool = True
) -> dict[str, list[R]]:
    """Every trainer once per round, one after the other in `round_order`; the runs of each, by trainer.

    `numbered=False` titles each run with the trainer name alone (for benchmarks without `--rounds`).
    """
    results: dict[str, list[R]] = {name: [] for name in runners}
    for index in range(rounds):
        for name in round_order(index):
            console.rule(f"round {index + 1}/{rounds}: {name}" if numbered else name)
            results[name].append(in_subprocess(runners[name], settings))
    return results


def median_run(runs: list[R], rate: Callable[[R], float]) -> R:
    """The run with the median `rate` (the lower middle one for an even count): robust to one noisy run."""
    return sorted(runs, key=rate)[(len(runs) - 1) // 2]


def warn_if_busy(console: Console, load: float, threads: int) -> None:
    """Other work on the cores makes the numbers low and noisy; oversubscribed torch threads, much worse."""
    cpus = os.cpu_count() or 1
    if load > cpus - threads + 0.5:
        console.print(
            f"[yellow]load average {load:.1f} on {cpus} CPUs before starting: other processes compete "
            f"with the {threads} torch thread(s); fewer --threads than free cores keeps timings sane"
        )


# --- measuring (inside a trainer's subprocess) ----------------------------------------------------------


def timed_window(trainer: str, times: list[float], batches: int, settings: RunSettings) -> tuple[float, list[float]]:
    """(seconds, per-step seconds) from the end of step `warmup` to the end of step `warmup + steps` (1-based).

    Refuses a run whose step stamps or recorded batches fall short: a silently shorter window would
    overstate the throughput.
    """
    if len(times) != settings.total_steps or batches < settings.total_steps:
        raise RuntimeError(
            f"{trainer}: got {len(times)} step times and {batches} batches, expected {settings.total_steps}"
        )
    seconds = times[-1] - times[settings.warmup - 1]
    return seconds, [b - a for a, b in pairwise(times[settings.warmup - 1 :])]


def peak_rss_mib() -> float:
    """Peak resident memory of this whole process so far (loading included), in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Memory:
    """Resident memory of this process: after the first training step, and the peak up to the last one."""

    def __init__(self) -> None:
        self.after_first_step_mib = 0.0
        self.peak_mib = 0.0

    def step_done(self) -> None:
        if not self.after_first_step_mib:
            self.after_first_step_mib = psutil.Process().memory_info().rss / 2**20
        self.peak_mib = peak_rss_mib()


def recording(collate: Callable[..., Any], log: list[Any], stats: Callable[[Any], Any]) -> Callable[..., Any]:
    """`collate`, appending `stats` of every batch it builds to `log` (batches are built in step order)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        batch = collate(*args, **kwargs)
        log.append(stats(batch))
        return batch

    return wrapped


def rlhfkit_config(config_class: type, out: str, settings: RunSettings, fields: dict[str, Any]) -> Any:
    """An rlhfkit config as the command line builds it: a YAML file, then the `--rlhfkit-set` overrides.

    Common fields: no held-out split (no evaluation at all; all rows train, as in TRL), a metrics row per
    step (the timestamps), output in `out`; `fields` adds the trainer's own and may replace any of these.
    """
    from rlhfkit.config import load_config

    base = {
        "model": settings.model_path,
        "max_length": settings.max_length,
        "learning_rate": settings.learning_rate,
        "max_steps": settings.total_steps,
        "log_every": 1,
        "eval_every": 0,
        "eval_fraction": 0.0,
        "output_dir": out,
        "seed": settings.seed,
        "num_threads": settings.threads,
    }
    config_file = Path(out) / "bench.yaml"
    config_file.write_text(yaml.safe_dump(base | fields))
    return load_config(config_class, config_file, list(settings.rlhfkit_set))


def rlhfkit_step_times(out: str) -> list[float]:
    """The wall-clock stamp of each optimizer step, from rlhfkit's `metrics.jsonl` (log_every=1)."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["time"] for r in rows if r["step"] >= 1]


def trl_overrides(texts: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings (values read as YAML) as keyword arguments of a TRL config."""
    from rlhfkit.config import parse_override

    return {".".join(keys): value for keys, value in map(parse_override, texts)}


def trl_args(out: str, settings: RunSettings, batch_size: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a TRL config: its defaults minus bf16, gradient checkpointing, logging, saving and
    eval, so only training runs in the window; then the trainer's own `fields`, then `--trl-set`."""
    base = {
        "output_dir": out,
        "max_length": settings.max_length,
        "per_device_train_batch_size": batch_size,
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
    return base | fields | trl_overrides(settings.trl_set)


def step_clock(on_step: Callable[[], None] | None = None) -> Any:
    """A TRL `TrainerCallback` stamping the wall clock at the end of each optimizer step (in `.times`).

    `on_step`, if given, runs right after each stamp (e.g. to sample memory at that point).
    """
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.time())
            if on_step is not None:
                on_step()

    return StepClock()


# --- command line and reporting ---------------------------------------------------------------------------


def add_run_args(
    parser: argparse.ArgumentParser, config: str, rlhfkit_example: str, trl_example: str, rounds: bool
) -> None:
    """The flags every benchmark takes after its own: window, threads, [rounds,] seed and the ablation overrides."""
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first (at least 1)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads on both sides")
    if rounds:
        parser.add_argument("--rounds", type=int, default=1, help="repeat both trainers, alternating who goes first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rlhfkit-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field of rlhfkit's {config}, e.g. {rlhfkit_example} (repeatable)",
    )
    parser.add_argument(
        "--trl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field of TRL's {config}{f', e.g. {trl_example}' if trl_example else ''} (repeatable)",
    )


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A window needs a warm-up step to start from and at least one timed step (and one round, if any)."""
    if not hasattr(args, "rounds"):
        if args.warmup < 1 or args.steps < 1:
            parser.error("--warmup and --steps must be at least 1")
    elif args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")


def print_table(console: Console, title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A results table: the trainer name left-aligned, the numbers right-aligned."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "trainer" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_verdict(console: Console, unit: str, ratio: float, target: float) -> None:
    """The headline: rlhfkit's speed-up over TRL, against the benchmark's target."""
    verdict = "[green]met" if ratio >= target else "[red]not met"
    console.print(f"rlhfkit / TRL {unit}: [bold]{ratio:.2f}x[/] (target >= {target}x: {verdict}[/])")


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """The versions that decide the numbers, so a result file says what it measured."""
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


def environment(load_before: tuple[float, float, float], packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """The record's closing fields: versions, and the machine with its load around the runs (noise check)."""
    return {
        "versions": versions(packages),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }


def write_record(console: Console, output: Path, record: dict[str, Any]) -> None:
    """Write the JSON result file (creating its folder) and say where."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {output}")
