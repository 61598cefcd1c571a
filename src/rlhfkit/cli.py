"""The `rlhfkit` command line: one command per pipeline stage, each reading a typed config.

Every stage command is `rlhfkit STAGE [CONFIG.yaml] [--set key=value ...]`; `rlhfkit STAGE --help` lists
the config's fields with their defaults and meanings. This module is the one list of the commands: the
stages' below, the feedback app's (`serve`, `export`, `feedback ...`) from `feedback/cli.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.markup import escape

from rlhfkit.config import Config, UserError, config_help, load_config
from rlhfkit.control.train import ControlConfig, control
from rlhfkit.distill.train import DistillConfig, distill
from rlhfkit.dpo.train import DPOConfig, dpo
from rlhfkit.evaluation.evaluate import EvalConfig, evaluate
from rlhfkit.evaluation.report import ReportConfig, report
from rlhfkit.feedback import cli as feedback_cli
from rlhfkit.generation.generate import GenerateConfig, generate
from rlhfkit.labeling.simulated import LabelConfig, simulate
from rlhfkit.loop import LoopConfig, loop
from rlhfkit.offline.train import OfflineConfig, offline
from rlhfkit.ppo.train import GRPOConfig, PPOConfig, RLOOConfig, ppo
from rlhfkit.pretrain.train import PretrainConfig, pretrain
from rlhfkit.quickstart import QuickstartConfig, quickstart
from rlhfkit.reward.pmp import PMPBuildConfig, build
from rlhfkit.reward.train import RewardConfig, reward
from rlhfkit.rlaif import AgreementConfig, AILabelConfig, ReviseConfig, agreement, label_ai, revise
from rlhfkit.scoring.arithmetic import write_task
from rlhfkit.sft.train import SFTConfig, sft

app = typer.Typer(
    help="rlhfkit: the whole RLHF pipeline, from a pretrained model to an aligned one.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

label_app = typer.Typer(
    help="Labels for sampled replies: simulated labelers, AI judges, agreement.", no_args_is_help=True
)
app.add_typer(label_app, name="label")
pmp_app = typer.Typer(help="Preference-model pretraining: cheap automatic comparisons.", no_args_is_help=True)
app.add_typer(pmp_app, name="pmp")
cai_app = typer.Typer(help="Constitutional AI: critique and revise with written principles.", no_args_is_help=True)
app.add_typer(cai_app, name="cai")

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config file (optional: defaults otherwise)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a field: key=value (repeatable)")]


def fields_table(cls: type[BaseModel]) -> str:
    """The config's fields as help text: name, meaning, default and type, one line each."""
    rows = config_help(cls)
    width = max(len(name) for name, *_ in rows)
    lines = [
        f"  {escape(name).ljust(width)}  {escape(doc)} [dim](default {escape(default)}; {escape(type_name)})[/dim]"
        for name, type_name, default, doc in rows
    ]
    header = f"[bold]Config fields[/bold] ({cls.__name__}): set them in the YAML file or with --set key=value"
    return header + "\n\n" + "\n".join(lines)


def exit_on_user_error(work: Callable[[], Any]) -> None:
    """Run `work`; a UserError (bad config, data, model path, output directory) is one red line and exit 2."""
    try:
        work()
    except UserError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def stage_command(name: str, config_cls: type[Config], help_text: str, group: typer.Typer = app) -> Callable:
    """Register `rlhfkit [GROUP] NAME [CONFIG] [--set key=value ...] [--resume] [--overwrite]` running the
    decorated function."""

    def register(run: Callable[[Any], Any]) -> Callable:
        def command(
            config: ConfigArg = None,
            overrides: SetOpt = None,
            resume: bool = False,
            overwrite: bool = False,
        ) -> None:
            extra = [f"{flag}=true" for flag, given in (("resume", resume), ("overwrite", overwrite)) if given]
            exit_on_user_error(lambda: run(load_config(config_cls, config, [*(overrides or []), *extra])))

        # Set here, not in the signature: each flag is hidden for stages whose config lacks its field.
        command.__annotations__["resume"] = Annotated[
            bool,
            typer.Option(
                "--resume", help="continue from the last checkpoint", hidden="resume" not in config_cls.model_fields
            ),
        ]
        command.__annotations__["overwrite"] = Annotated[
            bool,
            typer.Option(
                "--overwrite",
                help="start afresh in an output_dir that holds a run, deleting its contents",
                hidden="overwrite" not in config_cls.model_fields,
            ),
        ]
        group.command(name, help=help_text, epilog=fields_table(config_cls))(command)
        return run

    return register


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


@stage_command(
    "build", PMPBuildConfig, "Comparisons for PMP: corrupted corpus text, or scored replies by score.", pmp_app
)
def _pmp_build(config: PMPBuildConfig) -> None:
    print(build(config))


@stage_command("ppo", PPOConfig, "RL against reward models: PPO (or A2C) with a KL penalty to the reference, PPO-ptx.")
def _ppo(config: PPOConfig) -> None:
    print(ppo(config))


@stage_command(
    "grpo", GRPOConfig, "The ppo stage with GRPO's defaults: G samples per prompt, no critic, KL in the loss."
)
def _grpo(config: GRPOConfig) -> None:
    print(ppo(config))


@stage_command("rloo", RLOOConfig, "The ppo stage with RLOO's defaults: G samples per prompt, leave-one-out baseline.")
def _rloo(config: RLOOConfig) -> None:
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


@stage_command(
    "distill", DistillConfig, "Context distillation: train the model to answer as if a long HHH context were there."
)
def _distill(config: DistillConfig) -> None:
    print(distill(config))


@stage_command("offline", OfflineConfig, "Offline RL on scored replies, no reward model queried: ILQL, or AWR.")
def _offline(config: OfflineConfig) -> None:
    print(offline(config))


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


task_app = typer.Typer(help="Write a packaged task's prompt records (with reference answers).", no_args_is_help=True)
app.add_typer(task_app, name="task")


@task_app.command("arithmetic", help="Arithmetic word problems with exact answers: train.jsonl and heldout.jsonl.")
def _task_arithmetic(
    out_dir: Annotated[Path, typer.Argument(help="directory to write train.jsonl and heldout.jsonl into")],
    train: Annotated[int, typer.Option(min=1, help="training problems")] = 1000,
    heldout: Annotated[int, typer.Option(min=1, help="held-out problems (never in the training split)")] = 200,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    steps: Annotated[int, typer.Option(min=1, max=2, help="operations per problem (2: harder)")] = 1,
) -> None:
    for path in write_task(out_dir, train, heldout, seed, steps):
        print(path)


app.add_typer(feedback_cli.app)  # serve, export and the `feedback` group


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="rlhfkit")
