"""Registers each pipeline stage as an `rlhfkit` command (imported by the CLI on start-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlhfkit.cli import SetOpt, app, cai_app, exit_on_user_error, fields_table, label_app, stage_command
from rlhfkit.config import load_config
from rlhfkit.control.train import ControlConfig, control
from rlhfkit.dpo.train import DPOConfig, dpo
from rlhfkit.evaluation.evaluate import EvalConfig, evaluate
from rlhfkit.evaluation.report import ReportConfig, report
from rlhfkit.feedback import cli as feedback_cli  # noqa: F401  (registers serve, export, feedback)
from rlhfkit.generation.generate import GenerateConfig, generate
from rlhfkit.labeling.simulated import LabelConfig, simulate
from rlhfkit.loop import LoopConfig, loop
from rlhfkit.ppo.train import PPOConfig, ppo
from rlhfkit.pretrain.train import PretrainConfig, pretrain
from rlhfkit.quickstart import QuickstartConfig, quickstart
from rlhfkit.reward.train import RewardConfig, reward
from rlhfkit.rlaif import AgreementConfig, AILabelConfig, ReviseConfig, agreement, label_ai, revise
from rlhfkit.sft.train import SFTConfig, sft


@stage_command("pretrain", PretrainConfig, "Train a BPE tokenizer and a small GPT-2-style model from scratch.")
def _pretrain(config: PretrainConfig) -> None:
    pretrain(config)


@stage_command("sft", SFTConfig, "Supervised fine-tuning on demonstrations (loss on the response only).")
def _sft(config: SFTConfig) -> None:
    sft(config)


@stage_command("generate", GenerateConfig, "Sample responses to a file of prompts (batched, KV cache).")
def _generate(config: GenerateConfig) -> None:
    print(generate(config))


@stage_command("simulate", LabelConfig, "Judge sampled replies with a gold score and a noisy labeler.", label_app)
def _label_simulate(config: LabelConfig) -> None:
    print(simulate(config))


@stage_command("ai", AILabelConfig, "AI labels of sampled replies: a judge following a constitution.", label_app)
def _label_ai(config: AILabelConfig) -> None:
    print(label_ai(config))


@stage_command("agreement", AgreementConfig, "Agreement of AI labels with human/simulated ones.", label_app)
def _label_agreement(config: AgreementConfig) -> None:
    print(agreement(config))


@stage_command("revise", ReviseConfig, "Answer red-team prompts, critique, revise: SFT data.", cai_app)
def _cai_revise(config: ReviseConfig) -> None:
    print(revise(config))


@stage_command("reward", RewardConfig, "Train a reward model (or ensemble) on preferences, rankings or ratings.")
def _reward(config: RewardConfig) -> None:
    reward(config)


@stage_command("ppo", PPOConfig, "RL against reward models: PPO (or A2C) with a KL penalty to the reference, PPO-ptx.")
def _ppo(config: PPOConfig) -> None:
    print(ppo(config))


@stage_command("quickstart", QuickstartConfig, "Run the pipeline offline on the embedded model and data.")
def _quickstart(config: QuickstartConfig) -> None:
    quickstart(config)


@stage_command("loop", LoopConfig, "Online RLHF: rounds of generate, label, reward model, PPO/DPO, eval (resumable).")
def _loop(config: LoopConfig) -> None:
    print(loop(config))


@stage_command("dpo", DPOConfig, "Learn straight from preferences: DPO, cDPO, IPO, SLiC hinge, KTO (no reward model).")
def _dpo(config: DPOConfig) -> None:
    dpo(config)


@stage_command("eval", EvalConfig, "Evaluate checkpoints: gold, reward, KL, win-rate, leaderboard, calibration.")
def _eval(config: EvalConfig) -> None:
    print(evaluate(config))


@stage_command("control", ControlConfig, "RL from preferences between clips on Gymnasium tasks (Christiano et al.).")
def _control(config: ControlConfig) -> None:
    print(control(config))


@app.command(
    "report",
    help="One self-contained HTML page: reward and KL per step, frontier, leaderboard, calibration, samples, flags.",
    epilog=fields_table(ReportConfig),
)
def _report(
    runs: Annotated[list[Path], typer.Argument(help="run directories (and the runs below them)")],
    overrides: SetOpt = None,
) -> None:

    def run() -> None:
        config = load_config(ReportConfig, None, overrides)
        config.runs = [str(run) for run in runs]
        print(report(config))

    exit_on_user_error(run)
