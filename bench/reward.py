"""Reward-model training throughput: `rlhfkit reward` against TRL's `RewardTrainer`, on this machine's CPU, in one run.

Both trainers train a scalar head on the same checkpoint (loaded by rlhfkit's loader on both sides: the same
weights and tokenizer) on the same preference pairs, in fp32 with the same thread count, max length (prompt +
response), batch size, learning rate and number of optimizer steps, with the Bradley-Terry loss. rlhfkit
trains a causal-LM backbone with a head at the last real token; TRL the `AutoModelForSequenceClassification`
of the same checkpoint (the same transformer, with a `score` head at the last non-pad token). Each keeps its
own defaults otherwise (see bench/README.md).

The pairs: the packaged `demo-sft` openings, each with its own continuation as `chosen` and the continuation
of another opening as `rejected`; 1000 pairs (`--prompts`). With `--k 4`, each opening instead gets a ranking
of 4 continuations (its own first, then three others'): rlhfkit trains on the rankings, forwarding each reply
once for its C(4,2) = 6 pairs (InstructGPT's batching), and TRL on the same 6 pairs per opening, as preference
rows (the only form it takes); both forward the same number of sequences per step (2 x --batch-size), so
rlhfkit's steps hold 6 / 2 = 3 times the pairs. Each trainer runs in a fresh spawned subprocess,
one after the other. The timed window spans the optimizer steps after `--warmup` steps (per-step wall-clock
stamps: rlhfkit's `metrics.jsonl` with log_every=1, a TRL `TrainerCallback.on_step_end`); data
preparation, start-up and saving are outside it.

    pip install -e ".[bench]"
    python bench/reward.py                     # tiny-austen, 5 warm-up + 30 timed steps, batch 16 pairs
    python bench/reward.py --k 4               # rankings of 4 (rlhfkit) against their 6 pairs each (TRL)
    python bench/reward.py --model smollm2-135m-instruct --steps 8 --warmup 2
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

import torch
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft import in_subprocess, round_order, trl_overrides, versions, warn_if_busy

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Settings:
    """What both trainers share."""

    model: str  # the name given on the command line
    model_path: str  # its resolved checkpoint directory, loaded by both sides
    data: str  # rlhfkit's comparisons, JSONL: pairs (k = 2) or rankings of k
    pairs_data: str  # the same comparisons as preference pairs, for TRL
    k: int  # replies per comparison
    max_length: int
    batch_size: int  # TRL's pairs per optimizer step; rlhfkit takes 2 x batch_size / k comparisons (as many replies)
    learning_rate: float
    warmup: int
    steps: int
    threads: int
    seed: int
    rlhfkit_set: tuple[str, ...]  # extra `key=value` overrides of rlhfkit's RewardConfig (ablations)
    trl_set: tuple[str, ...]  # extra `key=value` keyword arguments of TRL's RewardConfig (ablations)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def comparisons_per_step(self) -> int:
        """rlhfkit's batch: as many replies per step as TRL's (2 per pair)."""
        return 2 * self.batch_size // self.k

    def pairs_per_step(self, trainer: str) -> int:
        return self.batch_size if trainer == "TRL" else self.comparisons_per_step * self.k * (self.k - 1) // 2


@dataclass(frozen=True)
class SideResult:
    """One trainer's measurement over the timed window."""

    trainer: str
    seconds: float
    pairs: int
    pairs_per_s: float
    positions_per_pair: float  # padded token positions the model computes per pair trained
    peak_rss_mib: float  # of the whole subprocess, loading included
    step_seconds: list[float]


def make_data(folder: Path, n: int, k: int) -> tuple[Path, Path]:
    """(comparisons, the same as pairs) for n <= 1000 `demo-sft` openings, k replies each.

    k = 2: the opening's own continuation is chosen, another opening's rejected (both files the same);
    k > 2: a ranking of the own continuation (rank 1) and k - 1 others' (ranks 2..k), and its C(k,2) pairs.
    """
    from rlhfkit import assets
    from rlhfkit.data.convert import ranking_to_pairs
    from rlhfkit.data.records import RankingRecord

    rows = [json.loads(line) for line in Path(assets.resolve("demo-sft")).read_text().splitlines()][:n]
    comparisons, pairs = folder / "comparisons.jsonl", folder / "pairs.jsonl"
    with comparisons.open("w") as c, pairs.open("w") as p:
        for i, row in enumerate(rows):
            others = [rows[(i + j * len(rows) // k) % len(rows)]["completion"] for j in range(1, k)]
            ranking = RankingRecord(prompt=row["prompt"], responses=[row["completion"], *others], ranks=range(1, k + 1))
            for pair in ranking_to_pairs(ranking):
                p.write(json.dumps({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}) + "\n")
            if k > 2:
                c.write(json.dumps(ranking.model_dump()) + "\n")
    return (comparisons if k > 2 else pairs), pairs


def measure(trainer: str, times: list[float], positions: list[int], settings: Settings) -> SideResult:
    """Throughput between the end of step `warmup` and the end of step `warmup + steps` (1-based steps)."""
    if len(times) != settings.total_steps or len(positions) < settings.total_steps:
        raise RuntimeError(
            f"{trainer}: got {len(times)} step times and {len(positions)} batches, expected {settings.total_steps}"
        )
    seconds = times[-1] - times[settings.warmup - 1]
    pairs = settings.steps * settings.pairs_per_step(trainer)
    return SideResult(
        trainer=trainer,
        seconds=seconds,
        pairs=pairs,
        pairs_per_s=pairs / seconds,
        positions_per_pair=sum(positions[settings.warmup : settings.total_steps]) / pairs,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        step_seconds=[b - a for a, b in pairwise(times[settings.warmup - 1 :])],
    )


def run_rlhfkit(settings: Settings) -> SideResult:
    """`rlhfkit reward` with its defaults, no held-out split and no normalisation, a timestamp per step."""
    from rlhfkit.config import load_config
    from rlhfkit.reward import train
    from rlhfkit.reward.train import RewardConfig, reward

    torch.set_num_threads(settings.threads)
    positions: list[int] = []
    collate = train.collate

    def recorded_collate(*args: Any, **kwargs: Any) -> Any:
        batch = collate(*args, **kwargs)
        positions.append(batch.positions)
        return batch

    with tempfile.TemporaryDirectory() as out:
        base = {
            "model": settings.model_path,
            "heads": {"reward": {"data": settings.data, "kind": "preference" if settings.k == 2 else "ranking"}},
            "max_length": settings.max_length,
            "batch_size": settings.comparisons_per_step,
            "micro_batch_size": settings.comparisons_per_step,
            "learning_rate": settings.learning_rate,
            "lr_schedule": "linear",  # TRL's default; the schedule does not change the speed
            "max_steps": settings.total_steps,
            "log_every": 1,
            "eval_every": 0,
            "eval_fraction": 0.0,  # no held-out split: no evaluation, and all pairs train, as in TRL
            "normalize_samples": 0,  # no normalisation pass after training (outside the window anyway)
            "output_dir": out,
            "seed": settings.seed,
            "num_threads": settings.threads,
        }
        config_file = Path(out) / "bench.yaml"
        config_file.write_text(yaml.safe_dump(base))
        config = load_config(RewardConfig, config_file, list(settings.rlhfkit_set))
        with mock.patch.object(train, "collate", recorded_collate):
            reward(config)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return measure("rlhfkit", [r["time"] for r in rows if r["step"] >= 1], positions, settings)


def run_trl(settings: Settings) -> SideResult:
    """TRL's `RewardTrainer` with its defaults, minus bf16, gradient checkpointing, logging, saving and eval."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rlhfkit.models.loading import load_tokenizer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.time())

    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path)
    model = AutoModelForSequenceClassification.from_pretrained(settings.model_path, num_labels=1, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = load_dataset("json", data_files=settings.pairs_data, split="train")
    clock = StepClock()
    positions: list[int] = []
    with tempfile.TemporaryDirectory() as out:
        base = {
            "output_dir": out,
            "max_length": settings.max_length,
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
        args = RewardConfig(**base | trl_overrides(settings.trl_set))
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
        )
        if len(trainer.train_dataset) != len(dataset):
            raise RuntimeError(f"TRL dropped {len(dataset) - len(trainer.train_dataset)} pairs longer than max_length")
        collate = trainer.data_collator

        def recorded_collate(*a: Any, **k: Any) -> Any:
            batch = collate(*a, **k)
            positions.append(batch["input_ids"].numel())  # (2 x batch, width): chosen rows, then rejected
            return batch

        trainer.data_collator = recorded_collate
        trainer.train()
    return measure("TRL", clock.times, positions, settings)


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


def median_run(runs: list[SideResult]) -> SideResult:
    """The run with the median pairs/s (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.pairs_per_s)[(len(runs) - 1) // 2]


def report(console: Console, results: dict[str, list[SideResult]], ratio: float) -> None:
    table = Table(title="Reward-model training throughput (timed steps only; median run)")
    for column in ["trainer", "pairs/s", "s/step", "positions/pair", "peak RSS MiB"]:
        table.add_column(column, justify="left" if column == "trainer" else "right")
    for name, runs in results.items():
        r = median_run(runs)
        table.add_row(
            name,
            f"{r.pairs_per_s:.2f}",
            f"{r.seconds / len(r.step_seconds):.3f}",
            f"{r.positions_per_pair:.1f}",
            f"{r.peak_rss_mib:.0f}",
        )
    console.print(table)
    verdict = "[green]met" if ratio >= TARGET_RATIO else "[red]not met"
    console.print(f"rlhfkit / TRL pairs/s: [bold]{ratio:.2f}x[/] (target >= {TARGET_RATIO}x: {verdict}[/])")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-austen", help="rlhfkit model name, local path or hub id")
    parser.add_argument("--prompts", type=int, default=1000, help="demo-sft openings (<= 1000) to build data from")
    parser.add_argument("--k", type=int, default=2, help="replies per comparison: 2 (pairs) or a ranking of k")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per prompt + response, both sides")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="TRL's pairs per step; rlhfkit: as many replies (no accumulation)"
    )
    parser.add_argument("--learning-rate", type=float, default=5e-5)
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
        help="override a field of rlhfkit's RewardConfig, e.g. group_by_length=false (repeatable)",
    )
    parser.add_argument(
        "--trl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of TRL's RewardConfig (repeatable)",
    )
    parser.add_argument("--output", type=Path, help="JSON result file (default: bench/results/reward[-kK].json)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    if args.k < 2 or (2 * args.batch_size) % args.k:
        parser.error("--k must be at least 2 and divide 2 x --batch-size")
    return args


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs
    from rlhfkit.models.loading import resolve_model_path

    args = parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as scratch:
        data, pairs_data = make_data(Path(scratch), args.prompts, args.k)
        settings = Settings(
            model=args.model,
            model_path=resolve_model_path(args.model),  # converts smollm2 once, before anything is timed
            data=str(data),
            pairs_data=str(pairs_data),
            k=args.k,
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
    ratio = median_run(results["rlhfkit"]).pairs_per_s / median_run(results["TRL"]).pairs_per_s
    report(console, results, ratio)
    record = {
        "benchmark": "reward",
        "ratio_pairs_per_s": ratio,
        "target_ratio": TARGET_RATIO,
        "settings": asdict(settings) | {"data": f"{args.prompts} demo-sft openings, k={args.k} (make_data)"},
        "dtype": "float32",
        "device": "cpu",
        "isolation": "one spawned subprocess per trainer run, run one after the other",
        "order": [round_order(i) for i in range(args.rounds)],
        "pairs_per_s": {name: median_run(runs).pairs_per_s for name, runs in results.items()},
        "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        "versions": versions(),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }
    output = args.output or RESULTS / ("reward.json" if args.k == 2 else f"reward-k{args.k}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    main()
