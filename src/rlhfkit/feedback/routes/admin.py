"""The admin's pages: users (add, deactivate), projects (create, import items, assign), statistics, the
audit log. Every change is written to the audit log with the admin's name."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData, UploadFile

from rlhfkit.data.readers import DataError
from rlhfkit.feedback.stats import project_stats
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.feedback.tasks import TASKS
from rlhfkit.feedback.web import Admin, CheckedForm, Id, StoreDep, checked_form, error_status, page

router = APIRouter()


def admin_page(request: Request, store: Store, status: int = 200, error: str | None = None) -> Response:
    return page(
        request,
        "admin.html",
        status,
        projects=store.projects(),
        users=store.users(),
        audit=store.audit_log(),
        error=error,
    )


def admin_action(request: Request, store: Store, action: Callable[[], Any]) -> Response:
    """Run an admin's change; a refusal shows the admin page again with the reason (nothing was written)."""
    try:
        action()
    except StoreError as exc:
        return admin_page(request, store, error_status(exc), str(exc))
    except DataError as exc:
        return admin_page(request, store, 400, str(exc))
    return RedirectResponse("/admin", 303)


def text_field(form: FormData, name: str, default: str | None = None) -> str:
    value = form.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is not None:
            return default
        raise StoreError(f"field '{name}': required")
    if not isinstance(value, str):
        raise StoreError(f"field '{name}': expected text")
    return value


def whole_number(form: FormData, name: str, default: int) -> int:
    text = text_field(form, name, str(default)).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise StoreError(f"field '{name}': expected a whole number, got {text!r}")
    return int(text)


@router.get("/admin")
def admin_home(request: Request, store: StoreDep, _user: Admin) -> Response:
    return admin_page(request, store)


@router.post("/admin/users")
def add_user(request: Request, store: StoreDep, user: Admin, form: CheckedForm) -> Response:
    return admin_action(
        request,
        store,
        lambda: store.add_user(
            text_field(form, "name"), text_field(form, "password"), text_field(form, "role", "annotator"), user.name
        ),
    )


@router.post("/admin/users/{user_id}/active")
def set_active(request: Request, user_id: Id, store: StoreDep, user: Admin, form: CheckedForm) -> Response:
    """Deactivate (`active=0`: signed out everywhere, tokens refused) or reactivate a user."""
    target = store.user(user_id)
    if target is None:
        raise HTTPException(404, f"no user {user_id}")
    if target.id == user.id:
        return admin_page(request, store, 400, "you cannot deactivate yourself")
    return admin_action(
        request, store, lambda: store.set_active(target.name, text_field(form, "active") == "1", user.name)
    )


@router.post("/admin/projects")
def add_project(request: Request, store: StoreDep, user: Admin, form: CheckedForm) -> Response:
    return admin_action(
        request,
        store,
        lambda: store.create_project(
            text_field(form, "name"),
            text_field(form, "task"),
            whole_number(form, "per_item", 1),
            text_field(form, "instructions", ""),
            text_field(form, "chat_model", "") or None,
            actor=user.name,
        ),
    )


@router.post("/admin/projects/{project_id}/items")
async def upload_items(request: Request, project_id: Id, store: StoreDep, user: Admin) -> Response:
    form = await checked_form(request)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(422, "field 'file': choose a JSONL or JSON file")
    name = Path(upload.filename or "items.jsonl").name
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (name if Path(name).suffix else f"{name}.jsonl")
        path.write_bytes(await upload.read())
        return admin_action(request, store, lambda: store.import_items(store.project(project_id).name, path, user.name))


@router.post("/admin/projects/{project_id}/assign")
def assign(request: Request, project_id: Id, store: StoreDep, user: Admin, form: CheckedForm) -> Response:
    names = [str(name) for name in form.getlist("users")]
    return admin_action(request, store, lambda: store.assign(store.project(project_id).name, names, user.name))


@router.get("/projects/{project_id}/stats")
def stats(request: Request, project_id: Id, store: StoreDep, _user: Admin) -> Response:
    project = store.project(project_id)
    result = project_stats(
        TASKS[project.task], project.per_item, len(store.items(project_id)), store.judgments(project_id)
    )
    return page(request, "stats.html", project=project, stats=result)
