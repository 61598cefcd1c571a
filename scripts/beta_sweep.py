"""The reward-vs-KL frontier: PPO and DPO at several β from a finished quickstart run, then one report.

Each PPO run trains against the quickstart's reward model and logs its held-out gold score and KL; each
DPO run trains on the quickstart's best-vs-worst pairs; `rlhfkit eval` then scores every policy on the same
held-out prompts and `rlhfkit report` draws gold against KL for all of them (the DPO paper's figure 2 setting).

    python scripts/beta_sweep.py --quickstart runs/quickstart --output runs/beta-sweep
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhfkit.dpo.train import DPOConfig, dpo
from rlhfkit.evaluation.evaluate import EvalConfig, evaluate
from rlhfkit.evaluation.report import ReportConfig, report
from rlhfkit.ppo.train import PPOConfig, ppo
from rlhfkit.scoring.sources import RewardSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", type=Path, default=Path("runs/quickstart"), help="a finished quickstart run")
    parser.add_argument("--output", type=Path, default=Path("runs/beta-sweep"))
    parser.add_argument("--ppo-betas", type=float, nargs="+", default=[0.02, 0.1, 0.3])
    parser.add_argument("--dpo-betas", type=float, nargs="+", default=[0.05, 0.3])
    parser.add_argument("--ppo-steps", type=int, default=20)
    parser.add_argument("--eval-prompts", type=int, default=128)
    args = parser.parse_args()
    sft, policies = args.quickstart / "sft", []
    for beta in args.ppo_betas:
        rewards = [RewardSource(source=str(args.quickstart / "reward"))]
        config = PPOConfig(
            model=str(sft), prompts="demo-sft", rewards=rewards, gold="vader", kl_coef=beta, learning_rate=3e-5,
            max_steps=args.ppo_steps, eval_every=0, output_dir=str(args.output / f"ppo-beta-{beta:g}"),
        )  # fmt: skip
        policies.append(str(ppo(config)))
    for beta in args.dpo_betas:
        config = DPOConfig(
            model=str(sft), data=str(args.quickstart / "dpo-pairs.jsonl"), beta=beta, epochs=1, learning_rate=1e-4,
            eval_every=0, log_every=10, output_dir=str(args.output / f"dpo-beta-{beta:g}"),
        )  # fmt: skip
        policies.append(str(dpo(config)))
    quickstart = [str(args.quickstart / name) for name in ("ppo", "dpo")]
    evaluate(
        EvalConfig(
            policies=[str(sft), *quickstart, *policies], reference=str(sft), limit=args.eval_prompts,
            reward_models=[str(args.quickstart / "reward")], output_dir=str(args.output / "eval"),
        )
    )  # fmt: skip
    print(report(ReportConfig(runs=[str(args.output)], output=str(args.output / "report.html"), title="β sweep")))


if __name__ == "__main__":
    main()
