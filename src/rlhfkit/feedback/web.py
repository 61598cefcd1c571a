"""What the routers share: the store and settings as dependencies, who is signed in, CSRF, page rendering."""

from __future__ import annotations

import secrets
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from rlhfkit.data.records import INSTRUCTGPT_FLAGS
from rlhfkit.feedback.schema import Item, Project, User
from rlhfkit.feedback.settings import AppSettings
from rlhfkit.feedback.store import Conflict, Forbidden, NotFound, Store, StoreError
from rlhfkit.feedback.tasks import STRENGTHS, TASKS

templates = Jinja2Templates(directory=str(files("rlhfkit.feedback") / "templates"))
templates.env.globals.update(TASKS=TASKS, FLAGS=INSTRUCTGPT_FLAGS, STRENGTHS=STRENGTHS)

# Ids in paths: positive and small enough for a 64-bit column (a larger one is a 422, not an OverflowError).
Id = Annotated[int, Path(ge=1, le=2**62)]


def error_status(exc: StoreError) -> int:
    """The HTTP status of a refusal by the store."""
    for kind, status in ((NotFound, 404), (Forbidden, 403), (Conflict, 409)):
        if isinstance(exc, kind):
            return status
    return 400


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> AppSettings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[AppSettings, Depends(get_settings)]


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if token is None:
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return token


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def current_user(request: Request) -> User | None:
    """The signed-in user: by bearer token (scripts), else by the cookie's session, which must still be live
    in the store (signed out, password changed and deactivated sessions are gone from it)."""
    if not hasattr(request.state, "user"):
        store = get_store(request)
        token = bearer_token(request)
        session_token = request.session.get("session")
        if token is not None:
            request.state.user = store.token_user(token)
        else:
            request.state.user = store.session_user(session_token) if session_token else None
    return request.state.user


class LoginRequired(Exception):
    pass


def signed_in(request: Request) -> User:
    user = current_user(request)
    if user is None:
        if request.url.path.startswith("/api/") or bearer_token(request) is not None:
            raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
        raise LoginRequired
    return user


def admin(user: Annotated[User, Depends(signed_in)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "admins only")
    return user


def check_csrf(request: Request, sent: Any) -> None:
    """Refuse a state-changing request whose CSRF token is not the session's; bearer-token requests carry no
    ambient credential a forger could borrow, so they need none."""
    if bearer_token(request) is not None:
        return
    if not isinstance(sent, str) or not sent or not secrets.compare_digest(sent, csrf_token(request)):
        raise HTTPException(403, "the CSRF token (form field csrf or header X-CSRF-Token) is missing or stale")


async def checked_form(request: Request) -> FormData:
    """The submitted form, once its CSRF token matches the session's (header or `csrf` field)."""
    form = await request.form()
    check_csrf(request, request.headers.get("x-csrf-token") or form.get("csrf"))
    return form


def form_fields(form: FormData) -> dict[str, Any]:
    """Form values by name; `flags` (checkboxes) as a list."""
    fields: dict[str, Any] = {key: form.get(key) for key in form if key != "csrf"}
    fields["flags"] = form.getlist("flags")
    return fields


SignedIn = Annotated[User, Depends(signed_in)]
Admin = Annotated[User, Depends(admin)]
CheckedForm = Annotated[FormData, Depends(checked_form)]


def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    context.update(user=current_user(request), csrf=csrf_token(request))
    return templates.TemplateResponse(request, template, context, status_code=status)


def assigned_project(store: Store, project_id: int, user: User) -> Project:
    projects = {p.id: p for p in store.projects(user)}
    if project_id not in projects:
        raise Forbidden("this project is not assigned to you")
    return projects[project_id]


def assigned_item(store: Store, item_id: int, user: User) -> Item:
    with store.reading() as session:
        item = session.get(Item, item_id)
        if item is None or not store.is_assigned(session, item.project_id, user):
            raise Forbidden("this item is not assigned to you")
        return item


def shown(store: Store, item: Item, user: User) -> list[dict[str, Any]]:
    """The item's replies in the annotator's shuffled order: display slot, text, clip URL (or None)."""
    return [
        {"slot": slot, "text": item.responses[stored], "media": f"/media/{item.id}/{stored}" if item.media else None}
        for slot, stored in enumerate(store.display_order(item, user.id))
    ]
