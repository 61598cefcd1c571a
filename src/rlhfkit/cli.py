"""The `rlhfkit` command line: one command per pipeline stage, each reading a typed config.

Every stage command is `rlhfkit STAGE [CONFIG.yaml] [--set key=value ...]`; `rlhfkit STAGE --help` lists
the config's fields with their defaults and meanings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.markup import escape

from rlhfkit.config import UserError, config_help, load_config

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


def stage_command(name: str, config_cls: type[BaseModel], help_text: str, group: typer.Typer = app) -> Callable:
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


def _import_commands() -> None:
    """Stage modules register themselves here; imported lazily so `rlhfkit --help` stays fast."""
    from rlhfkit import commands  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    _import_commands()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="rlhfkit")
