"""The JSON API for scripts and load tests: the next item, a judgment. Sign in with POST /api/login (a
cookie session; send its CSRF token as X-CSRF-Token) or send `Authorization: Bearer TOKEN` (a token from the
account page)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlhfkit.feedback.schemas import JudgmentBody, JudgmentReply, NextReply, ShownItem
from rlhfkit.feedback.web import Id, SignedIn, StoreDep, assigned_project, check_csrf, shown

router = APIRouter(prefix="/api")


@router.get("/projects/{project_id}/next")
def next_item(project_id: Id, store: StoreDep, user: SignedIn) -> NextReply:
    assigned_project(store, project_id, user)
    item = store.next_item(project_id, user)
    if item is None:
        return NextReply(item=None)
    return NextReply(
        item=ShownItem(id=item.id, prompt=item.prompt, responses=[r["text"] for r in shown(store, item, user)])
    )


def csrf_header(request: Request) -> None:
    check_csrf(request, request.headers.get("x-csrf-token"))


@router.post(
    "/items/{item_id}",
    status_code=201,
    responses={200: {"model": JudgmentReply}},
    dependencies=[Depends(csrf_header)],
)
def submit(item_id: Id, body: JudgmentBody, store: StoreDep, user: SignedIn) -> JSONResponse:
    """201 with the new judgment, 200 with the one already stored (a retried request stores nothing)."""
    judgment, created = store.submit(item_id, user, body.form())
    reply = JudgmentReply(judgment=judgment.id, created=created)
    return JSONResponse(reply.model_dump(), status_code=201 if created else 200)
