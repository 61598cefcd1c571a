"""The annotator's pages: project list, one item at a time, the chat, the items' clips."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from rlhfkit.feedback import chat
from rlhfkit.feedback.schema import Project, User
from rlhfkit.feedback.store import Store
from rlhfkit.feedback.web import (
    CheckedForm,
    Id,
    SignedIn,
    StoreDep,
    assigned_item,
    assigned_project,
    form_fields,
    page,
    shown,
)

router = APIRouter()


@router.get("/")
def home(request: Request, store: StoreDep, user: SignedIn) -> Response:
    return page(request, "projects.html", projects=[(p, store.progress(p.id, user)) for p in store.projects(user)])


@router.get("/projects/{project_id}")
def label(request: Request, project_id: Id, store: StoreDep, user: SignedIn) -> Response:
    project = assigned_project(store, project_id, user)
    if project.task == "chat":
        return RedirectResponse(f"/projects/{project_id}/chat", 303)
    item = store.next_item(project_id, user)
    if item is None:
        return page(request, "done.html", project=project)
    return page(request, "label.html", project=project, item=item, shown=shown(store, item, user))


@router.post("/projects/{project_id}/items/{item_id}")
def submit(project_id: Id, item_id: Id, store: StoreDep, user: SignedIn, form: CheckedForm) -> Response:
    project = assigned_project(store, project_id, user)
    store.submit(item_id, user, form_fields(form), project_id)
    target = f"/projects/{project_id}/chat" if project.task == "chat" else f"/projects/{project_id}"
    return RedirectResponse(target, 303)


def chat_project(store: Store, project_id: int, user: User) -> Project:
    project = assigned_project(store, project_id, user)
    if project.task != "chat":
        raise HTTPException(404, f"project {project.name!r} is a {project.task} project, not a chat")
    return project


@router.get("/projects/{project_id}/chat")
def chat_page(request: Request, project_id: Id, store: StoreDep, user: SignedIn) -> Response:
    project = chat_project(store, project_id, user)
    state = chat.conversation_state(store, project_id, user, request.session.get(f"chat:{project_id}"))
    replies = shown(store, state.pending, user) if state.pending is not None else None
    return page(request, "chat.html", project=project, state=state, shown=replies, item=state.pending)


@router.post("/projects/{project_id}/chat")
def chat_say(request: Request, project_id: Id, store: StoreDep, user: SignedIn, form: CheckedForm) -> Response:
    project = chat_project(store, project_id, user)
    message = form.get("message") or ""
    if not isinstance(message, str) or len(message) > chat.MAX_MESSAGE_CHARS:
        raise HTTPException(422, f"field 'message': text of at most {chat.MAX_MESSAGE_CHARS} characters")
    key = f"chat:{project_id}"
    if form.get("new") or key not in request.session:
        request.session[key] = secrets.token_hex(8)
    if message.strip():
        chat.say(store, project, user, request.session[key], message.strip())
    return RedirectResponse(f"/projects/{project_id}/chat", 303)


@router.get("/media/{item_id}/{index}")
def media(item_id: Id, index: Annotated[int, Path(ge=0, le=1000)], store: StoreDep, user: SignedIn) -> Response:
    """An item's clip or picture: only from the store's media folder, only as its allowed video/image type,
    never sniffed as anything else, offered as a download-safe attachment name."""
    item = assigned_item(store, item_id, user)
    found = store.media.servable(item.media[index]) if item.media and index < len(item.media) else None
    if found is None:
        raise HTTPException(404, "no such clip")
    path, content_type = found
    return FileResponse(
        path,
        media_type=content_type,
        content_disposition_type="inline",
        filename=path.name,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )
