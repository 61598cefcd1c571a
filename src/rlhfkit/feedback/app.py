"""`rlhfkit serve`: the labelling web app (FastAPI, server-rendered Jinja2 pages, one small vendored script).

Pages work as plain HTML forms; `static/app.js` adds keyboard shortcuts and drag-to-rank. Every POST carries
the session's CSRF token (a form field, or the X-CSRF-Token header for the JSON API), unless it signs in with
a bearer token. Model output and prompts are untrusted: templates autoescape them, and the
Content-Security-Policy allows no inline script. The routes live in `routes/`, one router per resource.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhfkit.data.readers import DataError
from rlhfkit.feedback.routes import admin, api, auth, export, labelling
from rlhfkit.feedback.security import Throttle
from rlhfkit.feedback.settings import AppSettings
from rlhfkit.feedback.store import SESSION_LIFETIME, Store, StoreError
from rlhfkit.feedback.tasks import JudgmentError
from rlhfkit.feedback.web import LoginRequired, error_status

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)
UPLOAD_PATH = "/admin/projects/"  # item uploads: /admin/projects/{id}/items


def create_app(store: Store, settings: AppSettings | None = None) -> FastAPI:
    settings = settings or AppSettings()
    app = FastAPI(
        title="rlhfkit feedback",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    app.state.store = store
    app.state.settings = settings
    app.state.throttles = (
        Throttle(settings.login_failures_per_account, settings.login_window_s),
        Throttle(settings.login_failures_per_address, settings.login_window_s),
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    app.add_middleware(
        SessionMiddleware,
        secret_key=store.secret(),
        same_site="strict",
        https_only=settings.https_only,
        max_age=int(SESSION_LIFETIME.total_seconds()),
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=str(files("rlhfkit.feedback") / "static")), name="static")
    for router in (auth.router, labelling.router, admin.router, export.router, api.router):
        app.include_router(router)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Refusals become 4xx answers naming the reason (and the field); nothing was stored."""

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(StoreError)
    async def refused(_request: Request, exc: StoreError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=error_status(exc))

    @app.exception_handler(JudgmentError)
    async def bad_judgment(_request: Request, exc: JudgmentError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(DataError)
    async def bad_data(_request: Request, exc: DataError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=400)


class BodyLimit:
    """413 for a request body over the limit (item uploads have their own, larger one), whether its size is
    declared up front or only shows as it streams in."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.upload_limit if path.startswith(UPLOAD_PATH) and path.endswith("/items") else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(scope, limit, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except _BodyTooLarge:
            if not started:
                await _too_large(scope, limit, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(scope: Scope, limit: int, send: Send) -> None:
    await JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
