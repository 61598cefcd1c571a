"""`rlhfkit serve`: the labelling web app (FastAPI, server-rendered Jinja2 pages, one small vendored script).

Pages work as plain HTML forms; `static/app.js` adds keyboard shortcuts and drag-to-rank. Every POST carries
the session's CSRF token (a form field, or the X-CSRF-Token header for the JSON API). Model output and
prompts are untrusted: templates autoescape them, and the Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData, UploadFile
from starlette.middleware.sessions import SessionMiddleware

from rlhfkit.data.readers import DataError
from rlhfkit.data.records import INSTRUCTGPT_FLAGS
from rlhfkit.feedback import chat
from rlhfkit.feedback.export import export_records
from rlhfkit.feedback.schema import Item, Project, User
from rlhfkit.feedback.stats import project_stats
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.feedback.tasks import STRENGTHS, TASKS, JudgmentError

PACKAGE = files("rlhfkit.feedback")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def create_app(store: Store) -> FastAPI:
    app = FastAPI(title="rlhfkit feedback", docs_url=None, redoc_url=None)
    app.state.store = store
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    templates.env.globals.update(TASKS=TASKS, FLAGS=INSTRUCTGPT_FLAGS, STRENGTHS=STRENGTHS)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    app.add_middleware(SessionMiddleware, secret_key=store.secret(), same_site="strict", max_age=12 * 3600)
    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")

    def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        context.update(user=current_user(request), csrf=csrf_token(request))
        return templates.TemplateResponse(request, template, context, status_code=status)

    _register_auth(app, page)
    _register_labelling(app, page)
    _register_admin(app, page)
    _register_api(app)
    return app


# --- sessions, CSRF, roles ------------------------------------------------------------------------------


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if token is None:
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return token


def current_user(request: Request) -> User | None:
    user_id = request.session.get("user_id")
    return request.app.state.store.user(user_id) if user_id is not None else None


class LoginRequired(Exception):
    pass


def signed_in(request: Request) -> User:
    user = current_user(request)
    if user is None:
        if request.url.path.startswith("/api/"):
            raise HTTPException(401, "sign in first")
        raise LoginRequired
    return user


def admin(user: Annotated[User, Depends(signed_in)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "admins only")
    return user


async def checked_form(request: Request) -> FormData:
    """The submitted form, once its CSRF token matches the session's (header or `csrf` field)."""
    form = await request.form()
    sent = request.headers.get("x-csrf-token") or form.get("csrf")
    if not sent or not secrets.compare_digest(str(sent), csrf_token(request)):
        raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
    return form


def form_fields(form: FormData) -> dict[str, Any]:
    """Form values by name; `flags` (checkboxes) as a list."""
    fields: dict[str, Any] = {key: form.get(key) for key in form if key != "csrf"}
    fields["flags"] = form.getlist("flags")
    return fields


SignedIn = Annotated[User, Depends(signed_in)]
Admin = Annotated[User, Depends(admin)]
CheckedForm = Annotated[FormData, Depends(checked_form)]


def _register_auth(app: FastAPI, page: Any) -> None:
    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.get("/login")
    def login_page(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", next=next, error=None)

    @app.post("/login")
    def login(request: Request, form: CheckedForm) -> Response:
        user = request.app.state.store.authenticate(str(form.get("name", "")), str(form.get("password", "")))
        if user is None:
            return page(request, "login.html", 401, next=form.get("next", "/"), error="Wrong name or password.")
        request.session.clear()  # a fresh session (and CSRF token) at sign-in: no fixation
        request.session["user_id"] = user.id
        target = str(form.get("next") or "/")
        return RedirectResponse(target if target.startswith("/") and not target.startswith("//") else "/", 303)

    @app.post("/logout")
    def logout(request: Request, _form: CheckedForm) -> Response:
        request.session.clear()
        return RedirectResponse("/login", 303)


def _register_labelling(app: FastAPI, page: Any) -> None:
    @app.get("/")
    def home(request: Request, user: SignedIn) -> Response:
        store: Store = request.app.state.store
        return page(request, "projects.html", projects=[(p, store.progress(p.id, user)) for p in store.projects(user)])

    @app.get("/projects/{project_id}")
    def label(request: Request, project_id: int, user: SignedIn) -> Response:
        store: Store = request.app.state.store
        project = _assigned_project(store, project_id, user)
        if project.task == "chat":
            return RedirectResponse(f"/projects/{project_id}/chat", 303)
        item = store.next_item(project_id, user)
        if item is None:
            return page(request, "done.html", project=project)
        return page(request, "label.html", project=project, item=item, shown=_shown(store, item, user))

    @app.post("/projects/{project_id}/items/{item_id}")
    def submit(request: Request, project_id: int, item_id: int, user: SignedIn, form: CheckedForm) -> Response:
        store: Store = request.app.state.store
        try:
            store.submit(item_id, user, form_fields(form))
        except StoreError as exc:
            raise HTTPException(403, str(exc)) from None
        except JudgmentError as exc:
            raise HTTPException(422, str(exc)) from None
        project = store.project(project_id)
        target = f"/projects/{project_id}/chat" if project.task == "chat" else f"/projects/{project_id}"
        return RedirectResponse(target, 303)

    @app.get("/projects/{project_id}/chat")
    def chat_page(request: Request, project_id: int, user: SignedIn) -> Response:
        store: Store = request.app.state.store
        project = _assigned_project(store, project_id, user)
        conversation = request.session.get(f"chat:{project_id}")
        state = chat.conversation_state(store, project_id, user, conversation)
        shown = _shown(store, state.pending, user) if state.pending is not None else None
        return page(request, "chat.html", project=project, state=state, shown=shown, item=state.pending)

    @app.post("/projects/{project_id}/chat")
    def chat_say(request: Request, project_id: int, user: SignedIn, form: CheckedForm) -> Response:
        store: Store = request.app.state.store
        project = _assigned_project(store, project_id, user)
        key = f"chat:{project_id}"
        if form.get("new") or key not in request.session:
            request.session[key] = secrets.token_hex(8)
        message = str(form.get("message") or "").strip()
        if message:
            chat.say(store, project, user, request.session[key], message)
        return RedirectResponse(f"/projects/{project_id}/chat", 303)

    @app.get("/media/{item_id}/{index}")
    def media(request: Request, item_id: int, index: int, user: SignedIn) -> Response:
        store: Store = request.app.state.store
        item = _assigned_item(store, item_id, user)
        if not item.media or not 0 <= index < len(item.media):
            raise HTTPException(404, "no such clip")
        return FileResponse(item.media[index])


def _register_admin(app: FastAPI, page: Any) -> None:
    @app.get("/admin")
    def admin_page(request: Request, user: Admin, error: str | None = None) -> Response:
        store: Store = request.app.state.store
        return page(request, "admin.html", projects=store.projects(), users=store.users(), error=error)

    def admin_action(request: Request, action: Any) -> Response:
        try:
            action(request.app.state.store)
        except (StoreError, DataError) as exc:
            store: Store = request.app.state.store
            return page(request, "admin.html", 400, projects=store.projects(), users=store.users(), error=str(exc))
        return RedirectResponse("/admin", 303)

    @app.post("/admin/users")
    def add_user(request: Request, _user: Admin, form: CheckedForm) -> Response:
        return admin_action(
            request, lambda s: s.add_user(str(form["name"]), str(form["password"]), str(form.get("role", "annotator")))
        )

    @app.post("/admin/projects")
    def add_project(request: Request, _user: Admin, form: CheckedForm) -> Response:
        return admin_action(
            request,
            lambda s: s.create_project(
                str(form["name"]),
                str(form["task"]),
                int(str(form.get("per_item") or 1)),
                str(form.get("instructions") or ""),
                str(form.get("chat_model") or "") or None,
            ),
        )

    @app.post("/admin/projects/{project_id}/items")
    async def upload_items(request: Request, project_id: int, _user: Admin) -> Response:
        form = await checked_form(request)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "field 'file': choose a JSONL or JSON file")
        suffix = Path(upload.filename or "items.jsonl").suffix or ".jsonl"
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{Path(upload.filename or 'items').stem}{suffix}"
            path.write_bytes(await upload.read())
            return admin_action(request, lambda s: s.import_items(s.project(project_id).name, path))

    @app.post("/admin/projects/{project_id}/assign")
    def assign(request: Request, project_id: int, _user: Admin, form: CheckedForm) -> Response:
        names = [str(name) for name in form.getlist("users")]
        return admin_action(request, lambda s: s.assign(s.project(project_id).name, names))

    @app.get("/projects/{project_id}/stats")
    def stats(request: Request, project_id: int, _user: Admin) -> Response:
        store: Store = request.app.state.store
        project = store.project(project_id)
        result = project_stats(
            TASKS[project.task], project.per_item, len(store.items(project_id)), store.judgments(project_id)
        )
        return page(request, "stats.html", project=project, stats=result)

    @app.get("/projects/{project_id}/export")
    def export(request: Request, project_id: int, _user: Admin, consensus: bool = False) -> Response:
        store: Store = request.app.state.store
        project = store.project(project_id)
        try:
            kind, records = export_records(store, project.name, consensus)
        except StoreError as exc:
            raise HTTPException(400, str(exc)) from None
        body = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        name = f"{project.name}-{kind}{'-consensus' if consensus else ''}.jsonl"
        return Response(
            body, media_type="application/jsonl", headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )


def _register_api(app: FastAPI) -> None:
    """JSON for scripts and load tests: sign in, fetch the next item, submit a judgment."""

    @app.post("/api/login")
    async def api_login(request: Request) -> Response:
        body = await request.json()
        user = request.app.state.store.authenticate(str(body.get("name", "")), str(body.get("password", "")))
        if user is None:
            raise HTTPException(401, "wrong name or password")
        request.session.clear()
        request.session["user_id"] = user.id
        return JSONResponse({"user": user.name, "csrf": csrf_token(request)})

    @app.get("/api/projects/{project_id}/next")
    def api_next(request: Request, project_id: int, user: SignedIn) -> Response:
        store: Store = request.app.state.store
        _assigned_project(store, project_id, user)
        item = store.next_item(project_id, user)
        if item is None:
            return JSONResponse({"item": None})
        shown = _shown(store, item, user)
        return JSONResponse({"item": {"id": item.id, "prompt": item.prompt, "responses": [r["text"] for r in shown]}})

    @app.post("/api/items/{item_id}")
    async def api_submit(request: Request, item_id: int, user: SignedIn) -> Response:
        sent = request.headers.get("x-csrf-token")
        if not sent or not secrets.compare_digest(sent, csrf_token(request)):
            raise HTTPException(403, "X-CSRF-Token header missing or stale")
        store: Store = request.app.state.store
        try:
            judgment, created = store.submit(item_id, user, await request.json())
        except StoreError as exc:
            raise HTTPException(403, str(exc)) from None
        except JudgmentError as exc:
            raise HTTPException(422, str(exc)) from None
        return JSONResponse({"judgment": judgment.id, "created": created}, status_code=201 if created else 200)


def _assigned_project(store: Store, project_id: int, user: User) -> Project:
    projects = {p.id: p for p in store.projects(user)}
    if project_id not in projects:
        raise HTTPException(403, "this project is not assigned to you")
    return projects[project_id]


def _assigned_item(store: Store, item_id: int, user: User) -> Item:
    with store.reading() as session:
        item = session.get(Item, item_id)
        if item is None or not store.is_assigned(session, item.project_id, user):
            raise HTTPException(403, "this item is not assigned to you")
        return item


def _shown(store: Store, item: Item, user: User) -> list[dict[str, Any]]:
    """The item's replies in the annotator's shuffled order: display slot, text, clip URL (or None)."""
    return [
        {"slot": slot, "text": item.responses[stored], "media": f"/media/{item.id}/{stored}" if item.media else None}
        for slot, stored in enumerate(store.display_order(item, user.id))
    ]
