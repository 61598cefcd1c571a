"""DPO training throughput and memory: `rlhfkit dpo` against TRL's `DPOTrainer`, on this machine's CPU, in one run.

Both trainers tune the same checkpoint (loaded by rlhfkit's loader: the same weights and tokenizer) on the
same preference pairs, in fp32 with the same thread count, max length (prompt + response), β, batch size,
learning rate and number of optimizer steps, with the sigmoid (DPO) loss. Each keeps its own defaults
otherwise; notably the reference log-probabilities: rlhfkit computes them in one pass before training and
caches them, TRL's default (`precompute_ref_log_probs=False`) keeps a reference copy of the model and runs
it at every step. `--trl-set precompute_ref_log_probs=true` measures TRL's precomputing mode.

The pairs: the packaged `demo-sft` openings, each with its own (cheerful) continuation as `chosen` and the
continuation of another opening as `rejected`; 1000 pairs (`--pairs`). Each trainer runs in a fresh spawned subprocess,
one after the other. The timed window spans the optimizer steps after `--warmup` steps (per-step wall-clock
stamps: rlhfkit's `metrics.jsonl` with log_every=1, a TRL `TrainerCallback.on_step_end`); the reference
pass, data preparation and start-up are outside it (rlhfkit's reference pass is timed separately). Peak
memory is the subprocess's peak resident set size up to the end of the last step (`getrusage` ru_maxrss,
loading included; rlhfkit's final save is after it), with the resident size after the first step beside it.

    pip install -e ".[bench]"
    python bench/dpo.py                      # tiny-austen, 5 warm-up + 30 timed steps, batch 16
    python bench/dpo.py --model smollm2-135m-instruct --pairs 48 --batch-size 4 --max-length 128 --warmup 1 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import torch
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft import in_subprocess, trl_overrides, versions, warn_if_busy

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "dpo.json"
TARGET_RATIO = 2.0


@dataclass(frozen=True)
class Settings:
    """What both trainers share."""

    model: str  # the name given on the command line
    model_path: str  # its resolved checkpoint directory, loaded by both sides
    data: str  # the pairs, JSONL
    max_length: int
    batch_size: int
    beta: float
    learning_rate: float
    warmup: int
    steps: int
    threads: int
    seed: int
    rlhfkit_set: tuple[str, ...]  # extra `key=value` overrides of rlhfkit's DPOConfig (ablations)
    trl_set: tuple[str, ...]  # extra `key=value` keyword arguments of TRL's DPOConfig (ablations)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


@dataclass(frozen=True)
class SideResult:
    """One trainer's measurement over the timed window."""

    trainer: str
    seconds: float
    pairs: int
    pairs_per_s: float
    positions_per_pair: float  # padded token positions the training forward computes per pair
    peak_rss_mib: float  # of the whole subprocess up to the end of the last step, loading included
    rss_after_first_step_mib: float
    setup_seconds: dict[str, float]  # untimed one-off work (rlhfkit: the reference pass)
    step_seconds: list[float]


def make_pairs(path: Path, n: int) -> Path:
    """n <= 1000 pairs from `demo-sft`: an opening's own continuation is chosen, another opening's rejected."""
    from rlhfkit import assets

    rows = [json.loads(line) for line in Path(assets.resolve("demo-sft")).read_text().splitlines()][:n]
    with path.open("w") as f:
        for i, row in enumerate(rows):
            other = rows[(i + len(rows) // 2) % len(rows)]["completion"]
            f.write(json.dumps({"prompt": row["prompt"], "chosen": row["completion"], "rejected": other}) + "\n")
    return path


class Memory:
    """Resident memory of this process: after the first optimizer step, and the peak up to the last one."""

    def __init__(self) -> None:
        self.after_first_step_mib = 0.0
        self.peak_mib = 0.0

    def step_done(self) -> None:
        if not self.after_first_step_mib:
            self.after_first_step_mib = psutil.Process().memory_info().rss / 2**20
        self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    trainer: str, times: list[float], positions: list[int], settings: Settings, memory: Memory, setup: dict
) -> SideResult:
    """Throughput between the end of step `warmup` and the end of step `warmup + steps` (1-based steps)."""
    if len(times) != settings.total_steps or len(positions) < settings.total_steps:
        raise RuntimeError(f"{trainer}: {len(times)} step times, {len(positions)} batches; want {settings.total_steps}")
    seconds = times[-1] - times[settings.warmup - 1]
    pairs = settings.batch_size * settings.steps
    return SideResult(
        trainer=trainer,
        seconds=seconds,
        pairs=pairs,
        pairs_per_s=pairs / seconds,
        positions_per_pair=sum(positions[settings.warmup : settings.total_steps]) / pairs,
        peak_rss_mib=memory.peak_mib,
        rss_after_first_step_mib=memory.after_first_step_mib,
        setup_seconds=setup,
        step_seconds=[b - a for a, b in pairwise(times[settings.warmup - 1 :])],
    )


def run_rlhfkit(settings: Settings) -> SideResult:
    """`rlhfkit dpo` with its defaults, no held-out split, a timestamp per optimizer step."""
    from rlhfkit.config import load_config
    from rlhfkit.dpo import reference, train
    from rlhfkit.dpo.train import DPOConfig, dpo

    torch.set_num_threads(settings.threads)
    positions: list[int] = []
    setup: dict[str, float] = {}
    memory = Memory()
    score, reference_pass = train.score, reference.sequence_logps

    def recorded_score(model: Any, sequences: list, *args: Any) -> Any:  # training forwards only
        if torch.is_grad_enabled():
            positions.append(len(sequences) * max(len(s.input_ids) for s in sequences))
        return score(model, sequences, *args)

    def timed_reference_pass(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        values = reference_pass(*args, **kwargs)
        setup["reference_pass"] = time.perf_counter() - started
        return values

    def after_step(fn: Callable[..., Any], first_call_too: bool) -> Callable[..., Any]:
        """`fn`, noting the memory first: each call of the step function follows a finished optimizer step
        (all but the first), and the final save follows the last one."""
        calls = 0

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 1 or first_call_too:
                memory.step_done()
            return fn(*args, **kwargs)

        return wrapped

    with tempfile.TemporaryDirectory() as out:
        base = {
            "model": settings.model_path,
            "data": settings.data,
            "max_length": settings.max_length,
            "batch_size": settings.batch_size,
            "micro_batch_size": settings.batch_size,
            "beta": settings.beta,
            "learning_rate": settings.learning_rate,
            "lr_schedule": "linear",  # TRL's default; the schedule does not change the speed
            "max_steps": settings.total_steps,
            "log_every": 1,
            "eval_every": 0,
            "eval_fraction": 0.0,  # no held-out split: no evaluation, and all 1000 pairs train, as in TRL
            "output_dir": out,
            "ref_cache_dir": str(Path(out) / "ref-cache"),  # a fresh cache: the reference pass runs
            "seed": settings.seed,
            "num_threads": settings.threads,
        }
        config_file = Path(out) / "bench.yaml"
        config_file.write_text(yaml.safe_dump(base))
        config = load_config(DPOConfig, config_file, list(settings.rlhfkit_set))
        with (
            mock.patch.object(train, "score", recorded_score),
            mock.patch.object(reference, "sequence_logps", timed_reference_pass),
            mock.patch.object(train, "optimizer_step", after_step(train.optimizer_step, first_call_too=False)),
            mock.patch.object(train, "save_model", after_step(train.save_model, first_call_too=True)),
        ):
            dpo(config)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return measure("rlhfkit", [r["time"] for r in rows if r["step"] >= 1], positions, settings, memory, setup)


def run_trl(settings: Settings) -> SideResult:
    """TRL's `DPOTrainer` with its defaults, minus bf16, gradient checkpointing, logging, saving and eval."""
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rlhfkit.models.loading import load_model, load_tokenizer

    memory = Memory()

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.time())
            memory.step_done()

    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path)
    model = load_model(settings.model_path, tokenizer)
    dataset = load_dataset("json", data_files=settings.data, split="train")
    clock = StepClock()
    positions: list[int] = []
    with tempfile.TemporaryDirectory() as out:
        base = {
            "output_dir": out,
            "max_length": settings.max_length,
            "beta": settings.beta,
            "loss_type": ["sigmoid"],
            "precompute_ref_log_probs": False,  # TRL's default, stated: a reference copy runs every step
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
        args = DPOConfig(**base | trl_overrides(settings.trl_set))
        # TRL's default reference is a second copy of the model, re-read from its path; it is loaded here by the
        # same loader as the policy, so its embeddings match a tokenizer that gained a pad token.
        ref_model = None if args.precompute_ref_log_probs else load_model(settings.model_path, tokenizer)
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        collate = trainer.data_collator

        def recorded_collate(*a: Any, **k: Any) -> Any:
            batch = collate(*a, **k)
            positions.append(batch["input_ids"].numel())  # (2 x batch, width): chosen rows, then rejected
            return batch

        trainer.data_collator = recorded_collate
        trainer.train()
    return measure("TRL", clock.times, positions, settings, memory, {})


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


def report(console: Console, results: dict[str, SideResult], ratio: float) -> None:
    table = Table(title="DPO training throughput (timed steps only) and memory")
    columns = ["trainer", "pairs/s", "s/step", "positions/pair", "peak RSS MiB", "RSS after step 1 MiB"]
    for column in columns:
        table.add_column(column, justify="left" if column == "trainer" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r.pairs_per_s:.2f}",
            f"{r.seconds / len(r.step_seconds):.3f}",
            f"{r.positions_per_pair:.1f}",
            f"{r.peak_rss_mib:.0f}",
            f"{r.rss_after_first_step_mib:.0f}",
        )
    console.print(table)
    if "reference_pass" in results["rlhfkit"].setup_seconds:
        console.print(
            f"rlhfkit's one-off reference pass (untimed): {results['rlhfkit'].setup_seconds['reference_pass']:.1f} s"
        )
    verdict = "[green]met" if ratio >= TARGET_RATIO else "[red]not met"
    console.print(f"rlhfkit / TRL pairs/s: [bold]{ratio:.2f}x[/] (target >= {TARGET_RATIO}x: {verdict}[/])")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-austen", help="rlhfkit model name, local path or hub id")
    parser.add_argument("--pairs", type=int, default=1000, help="training pairs (<= 1000), built from demo-sft")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per prompt + response, both sides")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step (no accumulation)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first (at least 1)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads on both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rlhfkit-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of rlhfkit's DPOConfig, e.g. group_by_length=false (repeatable)",
    )
    parser.add_argument(
        "--trl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of TRL's DPOConfig, e.g. precompute_ref_log_probs=true (repeatable)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs
    from rlhfkit.models.loading import resolve_model_path

    args = parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            model=args.model,
            model_path=resolve_model_path(args.model),  # converts smollm2 once, before anything is timed
            data=str(make_pairs(Path(tmp) / "pairs.jsonl", args.pairs)),
            max_length=args.max_length,
            batch_size=args.batch_size,
            beta=args.beta,
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
        results: dict[str, SideResult] = {}
        for name, runner in RUNNERS.items():
            console.rule(name)
            results[name] = in_subprocess(runner, settings)
    ratio = results["rlhfkit"].pairs_per_s / results["TRL"].pairs_per_s
    report(console, results, ratio)
    record = {
        "benchmark": "dpo",
        "ratio_pairs_per_s": ratio,
        "target_ratio": TARGET_RATIO,
        "settings": asdict(settings) | {"data": f"{args.pairs} demo-sft pairs (bench/dpo.py make_pairs)"},
        "dtype": "float32",
        "device": "cpu",
        "isolation": "one spawned subprocess per trainer, TRL first, then rlhfkit",
        "pairs_per_s": {name: r.pairs_per_s for name, r in results.items()},
        "runs": {name: asdict(r) for name, r in results.items()},
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
