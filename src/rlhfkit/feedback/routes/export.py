"""An admin's download of a project's judgments as training records (JSONL), written to the audit log."""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import Response

from rlhfkit.feedback.export import export_records
from rlhfkit.feedback.web import Admin, Id, StoreDep

router = APIRouter()


def attachment(name: str) -> str:
    """A Content-Disposition for any file name: an ASCII fallback and the UTF-8 name (RFC 6266 / 5987)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/projects/{project_id}/export")
def export(project_id: Id, store: StoreDep, user: Admin, consensus: bool = False) -> Response:
    project = store.project(project_id)
    kind, records = export_records(store, project.name, consensus)
    store.audit(
        user.name, "export", f"{project.name} ({len(records)} {kind} records{', consensus' if consensus else ''})"
    )
    body = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    name = f"{project.name}-{kind}{'-consensus' if consensus else ''}.jsonl"
    return Response(body, media_type="application/jsonl", headers={"Content-Disposition": attachment(name)})
