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
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
    print_table,
    print_verdict,
    recording,
    rlhfkit_config,
    rlhfkit_step_times,
    run_fields,
    run_rounds,
    step_clock,
    timed_window,
    trl_args,
    warn_if_busy,
    write_record,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "dpo.json"
TARGET_RATIO = 2.0


@dataclass(frozen=True)
class Settings(RunSettings):
    """What both trainers share: the common run settings and DPO's β."""

    beta: float


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


def measure(
    trainer: str, times: list[float], positions: list[int], settings: Settings, memory: Memory, setup: dict
) -> SideResult:
    """Throughput between the end of step `warmup` and the end of step `warmup + steps` (1-based steps)."""
    seconds, step_seconds = timed_window(trainer, times, len(positions), settings)
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
        step_seconds=step_seconds,
    )


def run_rlhfkit(settings: Settings) -> SideResult:
    """`rlhfkit dpo` with its defaults, no held-out split, a timestamp per optimizer step."""
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
        fields = {
            "data": settings.data,
            "batch_size": settings.batch_size,
            "micro_batch_size": settings.batch_size,
            "beta": settings.beta,
            "lr_schedule": "linear",  # TRL's default; the schedule does not change the speed
            "ref_cache_dir": str(Path(out) / "ref-cache"),  # a fresh cache: the reference pass runs
        }
        config = rlhfkit_config(DPOConfig, out, settings, fields)
        with (
            mock.patch.object(train, "score", recorded_score),
            mock.patch.object(reference, "sequence_logps", timed_reference_pass),
            mock.patch.object(train, "optimizer_step", after_step(train.optimizer_step, first_call_too=False)),
            mock.patch.object(train, "finish_run", after_step(train.finish_run, first_call_too=True)),
        ):
            dpo(config)
        times = rlhfkit_step_times(out)
    return measure("rlhfkit", times, positions, settings, memory, setup)


def run_trl(settings: Settings) -> SideResult:
    """TRL's `DPOTrainer` with its defaults, minus bf16, gradient checkpointing, logging, saving and eval."""
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    from rlhfkit.models.loading import load_model, load_tokenizer

    memory = Memory()
    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path)
    model = load_model(settings.model_path, tokenizer)
    dataset = load_dataset("json", data_files=settings.data, split="train")
    clock = step_clock(memory.step_done)
    positions: list[int] = []
    with tempfile.TemporaryDirectory() as out:
        fields = {
            "beta": settings.beta,
            "loss_type": ["sigmoid"],
            "precompute_ref_log_probs": False,  # TRL's default, stated: a reference copy runs every step
        }
        args = DPOConfig(**trl_args(out, settings, settings.batch_size, fields))
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
        # (2 x batch, width): chosen rows, then rejected
        trainer.data_collator = recording(trainer.data_collator, positions, lambda batch: batch["input_ids"].numel())
        trainer.train()
    return measure("TRL", clock.times, positions, settings, memory, {})


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


def report(console: Console, results: dict[str, SideResult], ratio: float) -> None:
    rows = [
        [
            name,
            f"{r.pairs_per_s:.2f}",
            f"{r.seconds / len(r.step_seconds):.3f}",
            f"{r.positions_per_pair:.1f}",
            f"{r.peak_rss_mib:.0f}",
            f"{r.rss_after_first_step_mib:.0f}",
        ]
        for name, r in results.items()
    ]
    columns = ["trainer", "pairs/s", "s/step", "positions/pair", "peak RSS MiB", "RSS after step 1 MiB"]
    print_table(console, "DPO training throughput (timed steps only) and memory", columns, rows)
    if "reference_pass" in results["rlhfkit"].setup_seconds:
        console.print(
            f"rlhfkit's one-off reference pass (untimed): {results['rlhfkit'].setup_seconds['reference_pass']:.1f} s"
        )
    print_verdict(console, "pairs/s", ratio, TARGET_RATIO)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-austen", help="rlhfkit model name, local path or hub id")
    parser.add_argument("--pairs", type=int, default=1000, help="training pairs (<= 1000), built from demo-sft")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per prompt + response, both sides")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step (no accumulation)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    add_run_args(parser, "DPOConfig", "group_by_length=false", "precompute_ref_log_probs=true", rounds=False)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    args = parser.parse_args()
    check_run_args(parser, args)
    return args


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs

    args = parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data=str(make_pairs(Path(tmp) / "pairs.jsonl", args.pairs)),
            beta=args.beta,
            **run_fields(args),
        )
        load_before = os.getloadavg()
        warn_if_busy(console, load_before[0], settings.threads)
        runs = run_rounds(console, RUNNERS, settings, rounds=1, numbered=False)  # TRL first, then rlhfkit
        results = {name: only for name, (only,) in runs.items()}
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
        **environment(load_before),
    }
    write_record(console, args.output, record)


if __name__ == "__main__":
    main()
