"""Command-line side of the feedback app: `rlhfkit serve`, `rlhfkit export` and `rlhfkit feedback ...`
(users, projects with imported or generated items, assignments, statistics)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from rlhfkit.data.convert import TiePolicy, apply_tie_policy, ties_path
from rlhfkit.data.readers import DataError, Row, read_rows
from rlhfkit.data.records import load_records
from rlhfkit.feedback.export import export_records, write_records
from rlhfkit.feedback.stats import project_stats
from rlhfkit.feedback.store import CLI_ACTOR, DEFAULT_DB, Store, StoreError
from rlhfkit.feedback.tasks import TASKS
from rlhfkit.generation.generate import sample_replies
from rlhfkit.generation.sampling import SamplingSettings

app = typer.Typer()  # serve and export; the CLI adds them to `rlhfkit`
feedback_app = typer.Typer(
    help="The feedback store: users, projects, items, assignments, statistics.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")

DbOpt = Annotated[str, typer.Option("--db", help="SQLAlchemy URL: sqlite:///FILE (default) or postgresql://...")]
MediaOpt = Annotated[
    Path | None,
    typer.Option(help="folder items' clips are copied into and served from (default: FILE-media beside a SQLite FILE)"),
]


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(str(exc), fg="red", err=True)
    return typer.Exit(2)


def _password(name: str) -> str:
    """From RLHFKIT_PASSWORD (scripts, CI), else asked for twice without echo."""
    return os.environ.get("RLHFKIT_PASSWORD") or typer.prompt(
        f"password for {name}", hide_input=True, confirmation_prompt=True
    )


@app.command("serve", help="Run the labelling web app (FastAPI + uvicorn) on a feedback store.")
def serve(
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 to serve a team)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    admin: Annotated[str | None, typer.Option(help="create this admin user first if the store has no users")] = None,
    media_root: MediaOpt = None,
    https_only: Annotated[bool, typer.Option(help="Secure session cookies (behind a TLS proxy)")] = False,
    api_docs: Annotated[bool, typer.Option(help="serve the OpenAPI schema at /openapi.json")] = False,
) -> None:
    import uvicorn

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.settings import AppSettings

    try:
        store = Store(db, media_root)
        if admin and not store.users():
            store.add_user(admin, _password(admin), "admin")
    except StoreError as exc:
        raise _fail(exc) from None
    if not store.users():
        typer.secho("the store has no users yet: pass --admin NAME to create the first admin", fg="yellow", err=True)
    settings = AppSettings(https_only=https_only, api_docs=api_docs)
    uvicorn.run(create_app(store, settings), host=host, port=port, log_level="warning")


@app.command("export", help="Write a project's judgments as training records (JSONL or a Hugging Face dataset).")
def export(
    project: Annotated[str, typer.Argument(help="project name")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file, or dataset directory with --hf")],
    db: DbOpt = DEFAULT_DB,
    consensus: Annotated[bool, typer.Option(help="one record per item, by consensus of its annotators")] = False,
    hf: Annotated[bool, typer.Option("--hf", help="write a `save_to_disk` dataset directory")] = False,
    ties: Annotated[
        TiePolicy,
        typer.Option(help="tied pairs: drop (TRL would train them as wins), keep, or separate (OUTPUT.ties.jsonl)"),
    ] = "drop",
) -> None:
    try:
        store = Store(db)
        kind, records = export_records(store, project, consensus, ties="keep")
    except StoreError as exc:
        raise _fail(exc) from None
    store.audit(CLI_ACTOR, "export", f"{project} ({len(records)} {kind} records) to {output}")
    exported, tied = apply_tie_policy(records, ties)
    print(f"{write_records(exported, output, hf)}: {len(exported)} {kind} records")
    if ties == "separate":
        print(f"{write_records(tied, ties_path(output), hf)}: {len(tied)} tied pairs")
    elif len(exported) < len(records):
        print(f"{len(records) - len(exported)} tied pairs left out (--ties keep|separate)")


@feedback_app.command("user", help="Add a user (the password comes from RLHFKIT_PASSWORD or a prompt).")
def add_user(
    name: str,
    role: Annotated[str, typer.Option(help="admin or annotator")] = "annotator",
    db: DbOpt = DEFAULT_DB,
) -> None:
    try:
        Store(db).add_user(name, _password(name), role)
    except StoreError as exc:
        raise _fail(exc) from None


@feedback_app.command("deactivate", help="Sign a user out everywhere and refuse their sign-ins and tokens.")
def deactivate(name: str, db: DbOpt = DEFAULT_DB) -> None:
    try:
        Store(db).set_active(name, False)
    except StoreError as exc:
        raise _fail(exc) from None


@feedback_app.command("token", help="Print a new API token for a user's scripts (Authorization: Bearer TOKEN).")
def token(name: str, label: Annotated[str, typer.Option(help="what the token is for")], db: DbOpt = DEFAULT_DB) -> None:
    try:
        store = Store(db)
        user = next((u for u in store.users() if u.name == name), None)
        if user is None:
            raise StoreError(f"no user {name!r}")
        print(store.create_token(user, label))
    except StoreError as exc:
        raise _fail(exc) from None


@feedback_app.command("project", help="Create a project, with items imported from files or generated by models.")
def create_project(
    name: str,
    task: Annotated[str, typer.Option(help="pairwise, rank, likert, thumbs, edit, demonstration or chat")],
    per_item: Annotated[int, typer.Option(help="annotators per item")] = 1,
    instructions: Annotated[str, typer.Option(help="shown above every item")] = "",
    items: Annotated[list[Path] | None, typer.Option(help="item files: prompt + responses/completion rows")] = None,
    prompts: Annotated[Path | None, typer.Option(help="prompt records to generate replies for with --models")] = None,
    models: Annotated[list[str] | None, typer.Option(help="local models replying to --prompts (repeatable)")] = None,
    samples: Annotated[int, typer.Option(help="replies per prompt from each model")] = 1,
    chat_model: Annotated[str | None, typer.Option(help="the model a chat project talks to")] = None,
    assign: Annotated[list[str] | None, typer.Option(help="annotators to assign (repeatable)")] = None,
    db: DbOpt = DEFAULT_DB,
    media_root: MediaOpt = None,
) -> None:
    try:
        store = Store(db, media_root)
        generated = _generated_rows(prompts, models or [], samples) if prompts else []
        rows = [row for path in items or [] for row in read_rows(path)] + generated
        project = store.create_project(name, task, per_item, instructions, chat_model, rows)
        store.assign(name, assign or [])
    except (StoreError, DataError) as exc:
        raise _fail(exc) from None
    print(f"project {project.name!r} ({task}): {len(store.items(name))} items")


def _generated_rows(prompts: Path, models: list[str], samples: int) -> list[Row]:
    """Rows of replies from each model in turn (their names kept per reply in `models`)."""
    if not models:
        raise StoreError("--prompts needs at least one --models to generate replies with")
    records = load_records(prompts, "prompt")
    texts = [r.prompt if isinstance(r.prompt, str) else [m.model_dump() for m in r.prompt] for r in records]
    per_model = [sample_replies(model, texts, samples, 32, SamplingSettings()) for model in models]
    return [
        Row(
            f"{prompts}:{i + 1}",
            {
                "prompt": prompt,
                "responses": [r for replies in per_model for r in replies[i]],
                "models": [m for m in models for _ in range(samples)],
            },
        )
        for i, prompt in enumerate(texts)
    ]


@feedback_app.command("assign", help="Assign annotators to a project.")
def assign(project: str, users: list[str], db: DbOpt = DEFAULT_DB) -> None:
    try:
        Store(db).assign(project, users)
    except StoreError as exc:
        raise _fail(exc) from None


@feedback_app.command("stats", help="Progress, agreement (pairwise, Krippendorff's alpha) and gold accuracy.")
def stats(project: str, db: DbOpt = DEFAULT_DB) -> None:
    try:
        store = Store(db)
        target = store.project(project)
        result = project_stats(TASKS[target.task], target.per_item, len(store.items(project)), store.judgments(project))
    except StoreError as exc:
        raise _fail(exc) from None
    print(json.dumps(result.as_dict(), indent=2))
