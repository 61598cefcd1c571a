"""RL from preferences against RL on the true reward: `rlhfkit control` with synthetic labels, on this machine's CPU.

For each seed, the same stable-baselines3 PPO agent (same hyperparameters, the same number of environment steps)
trains once on the task's true reward (`reward: true`, the baseline) and once per label budget on the reward
model of that many synthetic comparisons (`reward: learned`, the agent never sees the true reward). The
score of a run is the mean true return of its final policy over `--eval-episodes` deterministic episodes; the
headline is the ratio mean(learned) / mean(true) over the seeds, per label budget. Christiano et al. 2017
(arXiv:1706.03741, figure 1) report near parity on Hopper at 700 labels (over 1e7 steps); the target here is
a ratio of at least 0.9 at 700 labels. Each run is its own spawned process, `--jobs` at a time.

    python bench/control.py                                   # Hopper-v5, 700 and 1400 labels, 3 seeds
    python bench/control.py --env CartPole-v1 --timesteps 100000 --labels 100 700 \
        --output bench/results/control-cartpole.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_record

TARGET = 0.9  # learned / true at 700 labels
PACKAGES = ["rlhfkit", "torch", "stable-baselines3", "gymnasium", "mujoco"]


def run_one(job: tuple[dict[str, Any], list[str]]) -> dict[str, Any]:
    """One `rlhfkit control` run in this (fresh) process, from fields and `--set` overrides: its summary, the
    last training episodes' true return and the reward model's mean Spearman ρ with the true segment returns."""
    from rlhfkit.config import load_config
    from rlhfkit.control.train import ControlConfig, control

    fields, extra = job
    start = time.time()
    overrides = [f"{key}={json.dumps(value)}" for key, value in fields.items()] + extra
    summary = json.loads(control(load_config(ControlConfig, None, overrides)).read_text())
    rows = [json.loads(line) for line in (Path(fields["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    returns = [row["true_return"] for row in rows if "true_return" in row]
    spearman = [row["rm/spearman"] for row in rows if "rm/spearman" in row]
    return {
        **fields,
        **summary,
        "final_train_true_return": returns[-1] if returns else None,
        "mean_rm_spearman": sum(spearman) / len(spearman) if spearman else None,
        "seconds": time.time() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--timesteps", type=int, default=1_000_000, help="environment steps per run")
    parser.add_argument("--labels", type=int, nargs="+", default=[700, 1400], help="label budgets to compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iteration-steps", type=int, default=4096, help="RL steps between reward-model fits")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one process and one thread each")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("--output", type=Path, default=Path("bench/results/control.json"))
    args = parser.parse_args()
    console = Console()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="bench-control-"))
    base = {
        "env": args.env,
        "total_timesteps": args.timesteps,
        "iteration_steps": args.iteration_steps,
        "eval_episodes": args.eval_episodes,
        "num_threads": 1,
    }
    arms = [("true", {"reward": "true"})] + [(f"{n} labels", {"reward": "learned", "labels": n}) for n in args.labels]
    jobs = [
        (
            {**base, **fields, "seed": seed, "output_dir": str(scratch / f"{name.replace(' ', '-')}-seed{seed}")},
            args.overrides,
        )
        for seed in args.seeds
        for name, fields in arms
    ]
    names = [name for _ in args.seeds for name, _ in arms]
    console.print(f"{len(jobs)} runs of {args.timesteps} steps on {args.env}, {args.jobs} at a time, in {scratch}")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        runs = list(pool.map(run_one, jobs))

    by_arm = {name: [r for n, r in zip(names, runs, strict=True) if n == name] for name, _ in arms}
    means = {name: sum(r["eval/true_return"] for r in rs) / len(rs) for name, rs in by_arm.items()}
    ratios = {name: means[name] / means["true"] for name in means if name != "true"}
    rows = [
        [name, *(f"{r['eval/true_return']:.1f}" for r in rs), f"{means[name]:.1f}", f"{ratios.get(name, 1.0):.2f}"]
        for name, rs in by_arm.items()
    ]
    columns = ["reward", *(f"seed {s}" for s in args.seeds), "mean", "/ true"]
    print_table(console, f"{args.env}: final true return, {args.timesteps} steps", columns, rows)
    headline = ratios.get("700 labels")
    if headline is not None:
        verdict = "[green]met" if headline >= TARGET else "[red]not met"
        console.print(f"700 labels / true reward: [bold]{headline:.2f}[/] (target >= {TARGET}: {verdict}[/])")
    record = {
        "benchmark": "control",
        "settings": {**vars(args), "output": str(args.output)},
        "mean_true_return": means,
        "ratio_to_true_reward": ratios,
        "target_at_700_labels": TARGET,
        "runs": runs,
        "versions": {name: version(name) for name in PACKAGES},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    write_record(console, args.output, record)


if __name__ == "__main__":
    main()
