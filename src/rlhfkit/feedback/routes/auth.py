"""Signing in and out (form and JSON), the account page: password change and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from rlhfkit.feedback.schema import User
from rlhfkit.feedback.schemas import LoginBody, LoginReply
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.feedback.web import CheckedForm, Id, SignedIn, StoreDep, csrf_token, error_status, page

router = APIRouter()


class TooManyFailures(HTTPException):
    def __init__(self, seconds: int) -> None:
        super().__init__(429, f"too many failed sign-ins; try again in {seconds} s", {"Retry-After": str(seconds)})


def check_password(request: Request, store: Store, name: str, password: str) -> User | None:
    """The user, after the failure throttles per name and per client address allow a try (429 if not)."""
    throttles = request.app.state.throttles
    keys = [f"name:{name}", f"address:{request.client.host if request.client else '-'}"]
    wait = max(throttle.retry_after(key) for throttle, key in zip(throttles, keys, strict=True))
    if wait:
        raise TooManyFailures(wait)
    user = store.authenticate(name, password)
    if user is None:
        for throttle, key in zip(throttles, keys, strict=True):
            throttle.fail(key)
    else:
        throttles[0].clear(keys[0])
    return user


def start_session(request: Request, store: Store, user: User) -> None:
    """A fresh cookie session (and CSRF token) at sign-in, so nothing planted before it carries over."""
    request.session.clear()
    request.session["session"] = store.start_session(user)


def same_origin(request: Request) -> None:
    """Refuse a sign-in sent from another site's page (login CSRF): browsers name the sending page's origin."""
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" or (
        origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}"
    ):
        raise HTTPException(403, "sign-in from another site's page")


def json_body(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(415, "send the body as JSON (Content-Type: application/json)")


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    return page(request, "login.html", next=next, error=None)


@router.post("/login", dependencies=[Depends(same_origin)])
def login(request: Request, store: StoreDep, form: CheckedForm) -> Response:
    target = str(form.get("next") or "/")
    try:
        user = check_password(request, store, str(form.get("name", "")), str(form.get("password", "")))
    except TooManyFailures as exc:
        response = page(request, "login.html", 429, next=target, error=exc.detail)
        response.headers.update(exc.headers or {})
        return response
    if user is None:
        return page(request, "login.html", 401, next=target, error="Wrong name or password.")
    start_session(request, store, user)
    return RedirectResponse(target if target.startswith("/") and not target.startswith("//") else "/", 303)


@router.post("/logout")
def logout(request: Request, store: StoreDep, _form: CheckedForm) -> Response:
    token = request.session.get("session")
    if token:
        store.end_session(token)
    request.session.clear()
    return RedirectResponse("/login", 303)


@router.post("/api/login", dependencies=[Depends(same_origin), Depends(json_body)])
def api_login(request: Request, store: StoreDep, body: LoginBody) -> LoginReply:
    user = check_password(request, store, body.name, body.password)
    if user is None:
        raise HTTPException(401, "wrong name or password")
    start_session(request, store, user)
    return LoginReply(user=user.name, csrf=csrf_token(request))


def account_page(
    request: Request, store: Store, user: User, status: int = 200, new_token: str | None = None, error: str = ""
) -> Response:
    return page(request, "account.html", status, tokens=store.tokens(user), new_token=new_token, error=error)


@router.get("/account")
def account(request: Request, store: StoreDep, user: SignedIn) -> Response:
    return account_page(request, store, user)


@router.post("/account/password")
def change_password(request: Request, store: StoreDep, user: SignedIn, form: CheckedForm) -> Response:
    try:
        store.change_password(user, str(form.get("current", "")), str(form.get("new", "")))
    except StoreError as exc:
        return account_page(request, store, user, error_status(exc), error=str(exc))
    request.session.clear()  # every session of theirs was signed out, this one too
    return RedirectResponse("/login", 303)


@router.post("/account/tokens")
def create_token(request: Request, store: StoreDep, user: SignedIn, form: CheckedForm) -> Response:
    try:
        token = store.create_token(user, str(form.get("label", "")))
    except StoreError as exc:
        return account_page(request, store, user, error_status(exc), error=str(exc))
    return account_page(request, store, user, new_token=token)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(request: Request, token_id: Id, store: StoreDep, user: SignedIn, _form: CheckedForm) -> Response:
    try:
        store.revoke_token(user, token_id)
    except StoreError as exc:
        return account_page(request, store, user, error_status(exc), error=str(exc))
    return RedirectResponse("/account", 303)
