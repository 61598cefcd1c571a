"""Reward hacking, measured: PPO against a learned reward model with β = 0 and with the adaptive KL controller.

Uses the SFT model and reward model of a finished `rlhfkit quickstart` run. Both runs have the same seed,
prompts and learning rate; every `--eval-every` steps each is scored on the same held-out prompts with the
same sampling noise: the reward model's score (what PPO maximises), the gold VADER score (what the reward
model was trained to predict, never optimised), KL to the SFT model and distinct-2.

    python scripts/reward_hacking.py --quickstart runs/quickstart --steps 80
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlhfkit.ppo.train import PPOConfig, ppo
from rlhfkit.scoring.sources import RewardSource

COLUMNS = {
    "eval/reward/score": "RM score",
    "eval/gold/score": "gold (VADER)",
    "eval/kl/k1_per_token": "KL (nats/token)",
    "eval/response/distinct2": "distinct-2",
}


def run(args: argparse.Namespace, name: str, **settings: object) -> list[dict]:
    config = PPOConfig.model_validate(
        {
            "model": str(args.quickstart / "sft"),
            "rewards": [RewardSource(source=str(args.quickstart / "reward"))],
            "gold": "vader",
            "prompts": "demo-sft",
            "eval_prompts": "demo-prompts",
            "eval_size": args.eval_size,
            "eval_every": args.eval_every,
            "max_steps": args.steps,
            "learning_rate": args.learning_rate,
            "output_dir": str(args.output / name),
            "num_threads": args.threads,
            **settings,
        }
    )
    out = ppo(config)
    return [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/gold/score" in m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", type=Path, default=Path("runs/quickstart"), help="a finished quickstart run")
    parser.add_argument("--output", type=Path, default=Path("runs/reward-hacking"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--kl-target", type=float, default=4.0, help="adaptive run: KL per response, nats")
    parser.add_argument("--kl-horizon", type=int, default=320, help="adaptive run: horizon in episodes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runs = {
        "beta-0": run(args, "beta-0", kl_coef=0.0),
        "adaptive": run(args, "adaptive", kl_coef=0.05, kl_target=args.kl_target, kl_horizon=args.kl_horizon),
    }
    table = Table(title=f"PPO against the learned reward model, {args.eval_size} held-out prompts, 32 tokens, T=1")
    for column in ("run", "step", *COLUMNS.values(), "β"):
        table.add_column(column, justify="right")
    for name, evals in runs.items():
        for m in evals:
            beta = f"{m['kl/beta']:.3f}" if "kl/beta" in m else "-"
            table.add_row(name, str(m["step"]), *(f"{m[key]:.3f}" for key in COLUMNS), beta)
    Console().print(table)
    (args.output / "summary.json").write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
