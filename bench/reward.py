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
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
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

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Settings(RunSettings):
    """What both trainers share. `data`: rlhfkit's comparisons, pairs (k = 2) or rankings of k; `batch_size`:
    TRL's pairs per optimizer step (rlhfkit takes 2 x batch_size / k comparisons: as many replies)."""

    pairs_data: str  # the same comparisons as preference pairs, for TRL
    k: int  # replies per comparison

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
    seconds, step_seconds = timed_window(trainer, times, len(positions), settings)
    pairs = settings.steps * settings.pairs_per_step(trainer)
    return SideResult(
        trainer=trainer,
        seconds=seconds,
        pairs=pairs,
        pairs_per_s=pairs / seconds,
        positions_per_pair=sum(positions[settings.warmup : settings.total_steps]) / pairs,
        peak_rss_mib=peak_rss_mib(),
        step_seconds=step_seconds,
    )


def run_rlhfkit(settings: Settings) -> SideResult:
    """`rlhfkit reward` with its defaults, no held-out split and no normalisation, a timestamp per step."""
    from rlhfkit.reward import train
    from rlhfkit.reward.train import RewardConfig, reward

    torch.set_num_threads(settings.threads)
    positions: list[int] = []
    with tempfile.TemporaryDirectory() as out:
        fields = {
            "heads": {"reward": {"data": settings.data, "kind": "preference" if settings.k == 2 else "ranking"}},
            "batch_size": settings.comparisons_per_step,
            "micro_batch_size": settings.comparisons_per_step,
            "lr_schedule": "linear",  # TRL's default; the schedule does not change the speed
            "normalize_samples": 0,  # no normalisation pass after training (outside the window anyway)
        }
        config = rlhfkit_config(RewardConfig, out, settings, fields)
        with mock.patch.object(train, "collate", recording(train.collate, positions, lambda batch: batch.positions)):
            reward(config)
        times = rlhfkit_step_times(out)
    return measure("rlhfkit", times, positions, settings)


def run_trl(settings: Settings) -> SideResult:
    """TRL's `RewardTrainer` with its defaults, minus bf16, gradient checkpointing, logging, saving and eval."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from rlhfkit.models.loading import load_tokenizer

    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path)
    model = AutoModelForSequenceClassification.from_pretrained(settings.model_path, num_labels=1, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = load_dataset("json", data_files=settings.pairs_data, split="train")
    clock = step_clock()
    positions: list[int] = []
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(**trl_args(out, settings, settings.batch_size, {}))
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
        )
        if len(trainer.train_dataset) != len(dataset):
            raise RuntimeError(f"TRL dropped {len(dataset) - len(trainer.train_dataset)} pairs longer than max_length")
        # (2 x batch, width): chosen rows, then rejected
        trainer.data_collator = recording(trainer.data_collator, positions, lambda batch: batch["input_ids"].numel())
        trainer.train()
    return measure("TRL", clock.times, positions, settings)


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


def pairs_per_s(run: SideResult) -> float:
    return run.pairs_per_s


def report(console: Console, results: dict[str, list[SideResult]], ratio: float) -> None:
    rows = []
    for name, runs in results.items():
        r = median_run(runs, pairs_per_s)
        rows.append(
            [
                name,
                f"{r.pairs_per_s:.2f}",
                f"{r.seconds / len(r.step_seconds):.3f}",
                f"{r.positions_per_pair:.1f}",
                f"{r.peak_rss_mib:.0f}",
            ]
        )
    columns = ["trainer", "pairs/s", "s/step", "positions/pair", "peak RSS MiB"]
    print_table(console, "Reward-model training throughput (timed steps only; median run)", columns, rows)
    print_verdict(console, "pairs/s", ratio, TARGET_RATIO)


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
    add_run_args(parser, "RewardConfig", "group_by_length=false", "", rounds=True)
    parser.add_argument("--output", type=Path, help="JSON result file (default: bench/results/reward[-kK].json)")
    args = parser.parse_args()
    check_run_args(parser, args)
    if args.k < 2 or (2 * args.batch_size) % args.k:
        parser.error("--k must be at least 2 and divide 2 x --batch-size")
    return args


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs

    args = parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as scratch:
        data, pairs_data = make_data(Path(scratch), args.prompts, args.k)
        settings = Settings(
            data=str(data),
            pairs_data=str(pairs_data),
            k=args.k,
            **run_fields(args),
        )
        load_before = os.getloadavg()
        warn_if_busy(console, load_before[0], settings.threads)
        results = run_rounds(console, RUNNERS, settings, args.rounds)
    ratio = pairs_per_s(median_run(results["rlhfkit"], pairs_per_s)) / pairs_per_s(
        median_run(results["TRL"], pairs_per_s)
    )
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
        "pairs_per_s": {name: median_run(runs, pairs_per_s).pairs_per_s for name, runs in results.items()},
        "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        **environment(load_before),
    }
    write_record(console, args.output or RESULTS / ("reward.json" if args.k == 2 else f"reward-k{args.k}.json"), record)


if __name__ == "__main__":
    main()
