"""Does preference-model pretraining (PMP) save human labels? Held-out accuracy of reward models fine-tuned
on 50-400 simulated labels, with and without PMP on corrupted Austen text, over several seeds.

The human set is the quickstart's: K=4 continuations of Austen openings per prompt (here from tiny-austen,
16 tokens at temperature 1), ranked by the simulated VADER labeler (10% random answers). One label is one
ranked prompt. The last `--held-out` ranked prompts are the test set; each seed draws nested training
subsets from the rest. PMP: `rlhfkit pmp build` comparisons from the packaged Austen text, trained on
once per seed (`pmp.data`, the first size) and reused for the other sizes (`pmp.model`). Both arms then run
the same reward training on the labels. Finished runs are skipped, so a rerun continues.

    OMP_NUM_THREADS=1 python scripts/pmp_sweep.py --output runs/pmp-sweep --seeds 0 1 2
    OMP_NUM_THREADS=1 python scripts/pmp_sweep.py --labels runs/quickstart/labels.jsonl  # quickstart SFT replies
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from rlhfkit.generation.generate import GenerateConfig, generate
from rlhfkit.generation.sampling import SamplingSettings
from rlhfkit.labeling.simulated import LabelConfig, simulate
from rlhfkit.quickstart import reward_prompts
from rlhfkit.reward.pmp import PMPBuildConfig, build
from rlhfkit.reward.train import PMP_DIR, HeadData, PMPPhase, RewardConfig, reward


def simulated_labels(output: Path, prompts: int, seed: int) -> Path:
    """The quickstart's candidates (from tiny-austen) ranked by its simulated labeler."""
    labels = output / "labels.jsonl"
    if labels.exists():
        return labels
    prompts_file = output / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in reward_prompts(prompts)))
    candidates = generate(
        GenerateConfig(
            model="tiny-austen",
            prompts=str(prompts_file),
            output=str(output / "candidates.jsonl"),
            num_samples=4,
            seed=seed,
            sampling=SamplingSettings(max_new_tokens=16, temperature=1.0),
        )
    )
    config = LabelConfig(kind="ranking", gold="vader", temperature=0.0, random_prob=0.1, seed=seed)
    return simulate(config.model_copy(update={"candidates": str(candidates), "output": str(labels)}))


def accuracy(run: RewardConfig) -> float:
    """The held-out accuracy of a reward run, trained now unless its eval.json exists."""
    result = Path(run.output_dir) / "eval.json"
    if not result.exists():
        reward(run)
    return json.loads(result.read_text())["eval/reward/accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/pmp-sweep"))
    parser.add_argument("--labels", type=Path, help="ranked prompts to use instead of sampling tiny-austen's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--held-out", type=int, default=200, help="ranked prompts in the test set")
    parser.add_argument("--comparisons", type=int, default=4000, help="PMP comparisons from the Austen text")
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps of 16 rankings, every size")
    parser.add_argument("--pmp-epochs", type=float, default=1.0)
    args = parser.parse_args()
    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    labels = args.labels or simulated_labels(args.output, max(args.sizes) + args.held_out, 0)
    rows = labels.read_text().splitlines()
    if len(rows) < max(args.sizes) + args.held_out:
        parser.error(f"{labels}: {len(rows)} ranked prompts, fewer than {max(args.sizes) + args.held_out} needed")
    held_out, pool = args.output / "held-out.jsonl", rows[: -args.held_out]
    held_out.write_text("\n".join(rows[-args.held_out :]) + "\n")
    pmp_data = args.output / "pmp.jsonl"
    if not pmp_data.exists():
        build(PMPBuildConfig(output=str(pmp_data), comparisons=args.comparisons))
    results: dict[str, dict[int, list[float]]] = {"without PMP": {}, "with PMP": {}}
    for seed in args.seeds:
        order = random.Random(seed).sample(pool, len(pool))
        pmp = PMPPhase(data=str(pmp_data), epochs=args.pmp_epochs, learning_rate=3e-4)
        for n in sorted(args.sizes):
            train = args.output / f"seed{seed}" / f"labels-{n}.jsonl"
            train.parent.mkdir(parents=True, exist_ok=True)
            train.write_text("\n".join(order[:n]) + "\n")
            base = RewardConfig(
                model="tiny-austen",
                heads={"reward": HeadData(data=str(train), kind="ranking", eval_data=str(held_out))},
                max_steps=args.steps,
                learning_rate=1e-3,
                warmup_steps=5,
                eval_every=0,
                normalize_samples=0,
                seed=seed,
                overwrite=True,
            )
            for arm, settings in (("without PMP", PMPPhase()), ("with PMP", pmp)):
                run_dir = args.output / f"seed{seed}" / f"{n}-{'pmp' if settings.data or settings.model else 'base'}"
                run = base.model_copy(update={"pmp": settings, "output_dir": str(run_dir)})
                results[arm].setdefault(n, []).append(accuracy(run))
                if settings.data is not None:  # the other sizes start from this PMP model
                    pmp = PMPPhase(model=str(run_dir / PMP_DIR))
            print(f"seed {seed}, {n} labels: " + ", ".join(f"{a} {r[n][-1]:.3f}" for a, r in results.items()))
    table = [
        "| labels | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
        *(
            f"| {n} | "
            + " | ".join(f"{statistics.mean(r[n]):.3f} ± {statistics.pstdev(r[n]):.3f}" for r in results.values())
            + " |"
            for n in sorted(args.sizes)
        ),
    ]
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"held-out accuracy, mean ± std over seeds {args.seeds}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
