"""`rlhfkit quickstart`: the pipeline so far, offline, in about 5 minutes on a 2-core CPU.

SFT of the embedded `tiny-austen` model on demonstrations of cheerful continuations of Austen sentence
openings, with samples for held-out openings printed before and after; then K continuations per prompt
from the SFT model, ranked by a simulated labeler who prefers positive sentiment (VADER), and a reward
model trained on those rankings, with its accuracy on held-out prompts; then PPO and RLOO (critic-free,
4 replies per opening) against that reward model and DPO on the best-vs-worst pair of each ranking; then
SFT, PPO, RLOO and DPO continuations of the same held-out openings side by side, `rlhfkit eval` of the four
(gold sentiment, KL to the SFT model, diversity, win-rates, a Bradley-Terry leaderboard, calibration on the
cloze probe, and best-of-n of the SFT model by the reward model at its KL bound) and `rlhfkit report`'s HTML page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table

from rlhfkit import assets
from rlhfkit.config import Config
from rlhfkit.data.convert import best_vs_worst
from rlhfkit.data.records import Text, load_records
from rlhfkit.dpo.train import DPOConfig, dpo
from rlhfkit.evaluation.evaluate import EvalConfig, evaluate
from rlhfkit.evaluation.report import ReportConfig, report
from rlhfkit.generation.generate import GenerateConfig, generate
from rlhfkit.generation.sampling import SamplingSettings, sample
from rlhfkit.labeling.simulated import LabelConfig, simulate
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.ppo.train import PPOConfig, RLOOConfig, ppo
from rlhfkit.reward.train import HeadData, RewardConfig, reward
from rlhfkit.scoring.sources import RewardSource
from rlhfkit.sft.train import SFTConfig, sft

console = Console()


class QuickstartConfig(Config):
    """The quickstart run; every stage's settings can be changed with --set (e.g. sft.epochs=1)."""

    output_dir: str = Field("runs/quickstart", description="where every stage writes its outputs")
    overwrite: bool = Field(False, description="rerun into an output_dir that holds a quickstart, replacing it")
    prompts: str = Field("demo-prompts", description="held-out prompts for the samples")
    show: int = Field(6, ge=1, description="how many prompts to sample before and after")
    seed: int = Field(0, description="sampling seed (the same before and after)")
    sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(epochs=3, learning_rate=3e-4, warmup_steps=10, eval_every=0),
        description="the SFT stage",
    )
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(temperature=0.8), description="sampling for the samples shown"
    )
    reward_prompts: int = Field(1256, ge=2, description="prompts to sample candidates for: demo-prompts, then demo-sft")
    samples_per_prompt: int = Field(4, ge=2, description="K: candidate continuations per prompt, ranked together")
    candidates: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=16, temperature=1.0),
        description="sampling of the candidates",
    )
    labeler: LabelConfig = Field(
        default_factory=lambda: LabelConfig(kind="ranking", gold="vader", temperature=0.0, random_prob=0.1),
        description="the simulated labeler (its candidates and output are set by the quickstart)",
    )
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(epochs=1, learning_rate=1e-3, warmup_steps=5, eval_every=0),
        description="the reward-model stage (its model and data are set by the quickstart)",
    )
    ppo: PPOConfig = Field(
        default_factory=lambda: PPOConfig(
            # 2 epochs at lr 6e-5 reach the gold and KL of 4 epochs at 3e-5 (0.888 at 0.32 nats/token against
            # 0.890 at 0.31 on 256 held-out openings) for 60% of the CPU time
            prompts="demo-sft",
            max_steps=20,
            ppo_epochs=2,
            learning_rate=6e-5,
            kl_coef=0.05,
            eval_every=0,
            log_samples=2,
        ),
        description="the PPO stage, against the reward model (model and rewards set by the quickstart)",
    )
    rloo: RLOOConfig = Field(
        default_factory=lambda: RLOOConfig(
            # critic-free: 4 replies per opening, the leave-one-out baseline, one pass per batch; at lr 1e-4 it
            # passed PPO's gold (0.90) by step 9 at 13 nats and ended at 0.96 and 23 nats
            prompts="demo-sft",
            max_steps=20,
            learning_rate=5e-5,
            kl_coef=0.05,
            eval_every=0,
            log_samples=2,
        ),
        description="the RLOO stage (the PPO stage's critic-free estimator), against the same reward model",
    )
    dpo: DPOConfig = Field(
        default_factory=lambda: DPOConfig(epochs=1, learning_rate=1e-4, eval_every=0, log_every=10),
        description="the DPO stage, on the best-vs-worst pair of each ranking (model and data set by the quickstart)",
    )
    evaluation: EvalConfig = Field(
        default_factory=lambda: EvalConfig(limit=256, probe="cloze-probe", reward_models=[], best_of_limit=32),
        description="the evaluation of SFT, PPO, RLOO and DPO (its policies and output are set by the quickstart)",
    )
    best_of: list[Annotated[int, Field(ge=1)]] = Field(
        [1, 2, 4], description="best-of-n of the SFT model by the reward model, evaluated for each n ([]: none)"
    )


def samples_for(model_path: str, prompts: list[Text], config: QuickstartConfig) -> list[str]:
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, tokenizer).eval()
    torch.manual_seed(config.seed)
    return sample(model, tokenizer, prompts, config.sampling).texts


class StageClock:
    """Wall and CPU time per stage of the run, printed as a table at the end and kept in `timings.json`.

    CPU time (all threads of this process) next to wall time tells a busy machine from slow code."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        spent = self.seconds.setdefault(name, {"wall": 0.0, "cpu": 0.0})
        spent["wall"] += time.perf_counter() - wall
        spent["cpu"] += time.process_time() - cpu

    def report(self, path: Path) -> None:
        total = {key: sum(stage[key] for stage in self.seconds.values()) for key in ("wall", "cpu")}
        table = Table(title=f"time per stage ({torch.get_num_threads()} threads)", show_footer=True)
        table.add_column("stage", footer="total")
        table.add_column("wall", justify="right", footer=minutes(total["wall"]))
        table.add_column("CPU", justify="right", footer=minutes(total["cpu"]))
        for name, spent in self.seconds.items():
            table.add_row(name, minutes(spent["wall"]), minutes(spent["cpu"]))
        console.print(table)
        path.write_text(json.dumps({**self.seconds, "total": total}, indent=2) + "\n")


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def stage_dir(config: QuickstartConfig, stage: str) -> dict[str, Any]:
    """The settings that send a training stage to its folder of output_dir (replaced with --overwrite)."""
    return {"output_dir": str(Path(config.output_dir) / stage), "overwrite": config.overwrite}


def quickstart(config: QuickstartConfig) -> None:
    output_dir = Path(config.output_dir)
    clock = StageClock()
    sft_config = config.sft.model_copy(update=stage_dir(config, "sft"))
    prompts = [r.prompt for r in load_records(assets.resolve(config.prompts), "prompt")][: config.show]
    console.rule(f"1/6 SFT of {sft_config.model} on {sft_config.data}")
    with clock.stage("SFT, with samples before and after"):
        before = samples_for(sft_config.model, prompts, config)
        sft_dir = sft(sft_config)
        after = samples_for(str(sft_dir), prompts, config)
    console.rule("2/6 samples for held-out openings, before and after SFT")
    print_samples(prompts, {sft_config.model: before, "after SFT": after})
    losses = [json.loads(line) for line in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in losses if "eval/loss" in m]
    console.print(
        f"held-out SFT loss: {evals[0]['eval/loss']:.3f} (step 0) -> {evals[-1]['eval/loss']:.3f} "
        f"(step {evals[-1]['step']}); model saved to {sft_dir}"
    )
    reward_dir = train_reward_model(config, sft_dir, clock)
    metrics = json.loads((reward_dir / "eval.json").read_text())
    console.print(
        f"held-out reward-model accuracy: [bold]{metrics['eval/reward/accuracy']:.3f}[/bold] on "
        f"{int(metrics['eval/reward/pairs'])} pairs of continuations of prompts it never saw "
        f"(chance 0.5); model saved to {reward_dir}"
    )
    online = {"PPO": config.ppo, "RLOO": config.rloo}
    online_dirs = {}
    for name, stage_config in online.items():
        console.rule(
            f"5/6 {name} against the reward model, {stage_config.max_steps} steps of {stage_config.batch_size} episodes"
        )
        with clock.stage(name):
            online_dirs[name] = ppo(
                stage_config.model_copy(
                    update={
                        "model": str(sft_dir),
                        "rewards": [RewardSource(source=str(reward_dir))],
                        "gold": config.labeler.gold,
                        **stage_dir(config, name.lower()),
                    }
                )
            )
    console.rule("6/6 DPO on the best-vs-worst pair of each ranking")
    with clock.stage("DPO"):
        dpo_dir = dpo(
            config.dpo.model_copy(
                update={
                    "model": str(sft_dir),
                    "data": str(best_vs_worst(output_dir / "labels.jsonl", output_dir / "dpo-pairs.jsonl")),
                    **stage_dir(config, "dpo"),
                }
            )
        )
    policies = {"SFT": sft_dir, **online_dirs, "DPO": dpo_dir}
    with clock.stage("samples side by side"):
        print_samples(prompts, {name: samples_for(str(path), prompts, config) for name, path in policies.items()})
    console.rule(f"evaluation of SFT, PPO, RLOO and DPO on {config.evaluation.limit} held-out prompts, and the report")
    with clock.stage("evaluation"):
        evaluate(
            config.evaluation.model_copy(
                update={
                    "policies": [str(path) for path in policies.values()],
                    "reference": str(sft_dir),
                    "reward_models": [str(reward_dir)],
                    "best_of": config.best_of,
                    "best_of_rewards": [RewardSource(source=str(reward_dir))],
                    "output_dir": str(output_dir / "eval"),
                }
            )
        )
    with clock.stage("report"):
        page = report(
            ReportConfig(runs=[str(output_dir)], output=str(output_dir / "report.html"), title="rlhfkit quickstart")
        )
    clock.report(output_dir / "timings.json")
    console.print(f"report: [bold]{page}[/bold]")


def print_samples(prompts: list[Text], continuations: dict[str, list[str]]) -> None:
    """One row per prompt, one column per model."""
    table = Table(show_lines=True)
    for column in ("prompt", *continuations):
        table.add_column(column, overflow="fold")
    for prompt, *row in zip(prompts, *continuations.values(), strict=True):
        table.add_row(str(prompt), *row)
    console.print(table)


def reward_prompts(count: int) -> list:
    """The first `count` of the held-out demo prompts followed by the SFT prompts."""
    pool = [r.prompt for name in ("demo-prompts", "demo-sft") for r in load_records(assets.resolve(name), "prompt")]
    return pool[:count]


def train_reward_model(config: QuickstartConfig, sft_dir: Path, clock: StageClock) -> Path:
    """Sample K candidates per prompt from the SFT model, rank them with the labeler, train a reward model."""
    output_dir = Path(config.output_dir)
    prompts_file = output_dir / "reward-prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in reward_prompts(config.reward_prompts)))
    k = config.samples_per_prompt
    console.rule(f"3/6 {k} continuations per prompt from the SFT model, ranked by a {config.labeler.gold} labeler")
    with clock.stage("candidates and simulated labels"):
        candidates = generate(
            GenerateConfig(
                model=str(sft_dir),
                prompts=str(prompts_file),
                output=str(output_dir / "candidates.jsonl"),
                num_samples=k,
                seed=config.seed,
                sampling=config.candidates,
            )
        )
        labels = simulate(
            config.labeler.model_copy(
                update={"candidates": str(candidates), "output": str(output_dir / "labels.jsonl")}
            )
        )
    console.rule(f"4/6 reward model on {sum(1 for _ in labels.open())} rankings of {k}")
    reward_config = config.reward.model_copy(
        update={
            "model": str(sft_dir),
            "heads": {"reward": HeadData(data=str(labels), kind=config.labeler.kind)},
            **stage_dir(config, "reward"),
        }
    )
    with clock.stage("reward model"):
        return reward(reward_config)
