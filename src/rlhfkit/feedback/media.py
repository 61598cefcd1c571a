"""Clips and pictures shown beside replies: copied into a folder the store owns when items are imported, and
served only from there, only as the video or image type their first bytes prove.

An item's `media` path is never served as given: that would hand any readable file (the store's own
database, /etc/passwd) to an annotator, and a file of HTML would run as a page of this site.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from rlhfkit.data.readers import DataError

# Suffix -> (content type, test of the file's first 12 bytes). No SVG: an SVG image may carry script.
MEDIA_TYPES = {
    ".mp4": ("video/mp4", lambda head: head[4:8] == b"ftyp"),
    ".m4v": ("video/mp4", lambda head: head[4:8] == b"ftyp"),
    ".webm": ("video/webm", lambda head: head.startswith(b"\x1a\x45\xdf\xa3")),
    ".ogv": ("video/ogg", lambda head: head.startswith(b"OggS")),
    ".png": ("image/png", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    ".jpg": ("image/jpeg", lambda head: head.startswith(b"\xff\xd8\xff")),
    ".jpeg": ("image/jpeg", lambda head: head.startswith(b"\xff\xd8\xff")),
    ".gif": ("image/gif", lambda head: head[:6] in (b"GIF87a", b"GIF89a")),
    ".webp": ("image/webp", lambda head: head.startswith(b"RIFF") and head[8:12] == b"WEBP"),
}


def default_media_root(url: str) -> Path:
    """Beside a SQLite file (feedback.db -> feedback-media/); ./feedback-media for a database server."""
    if url.startswith("sqlite"):
        database = Path(url.split(":///", 1)[1])
        return database.with_name(f"{database.stem}-media")
    return Path("feedback-media")


def check_source(path: object, location: str, field: str) -> Path:
    """The media file a row names, once it is a regular file of an allowed type whose bytes match it."""
    if not isinstance(path, str) or not path:
        raise DataError(f"{location}: field '{field}': expected a file path")
    source = Path(path)
    allowed = MEDIA_TYPES.get(source.suffix.lower())
    if allowed is None:
        raise DataError(f"{location}: field '{field}': {path!r} is not one of {', '.join(MEDIA_TYPES)}")
    if not source.is_file():
        raise DataError(f"{location}: field '{field}': no such file {path!r}")
    with source.open("rb") as handle:
        if not allowed[1](handle.read(12)):
            raise DataError(f"{location}: field '{field}': {path!r} does not hold {allowed[0]} data")
    return source


class MediaFolder:
    """The store's media folder: one subfolder per project, files named by content hash and original name."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def add(self, project_id: int, source: Path) -> str:
        """Copy `source` (already checked) into the project's folder; its absolute path there."""
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", source.name)
        target = self.root / str(project_id) / f"{digest}-{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(source, partial)
            partial.replace(target)
        return str(target)

    def servable(self, stored: str) -> tuple[Path, str] | None:
        """(file, content type) for a stored media path that resolves to a regular file of an allowed type
        inside this folder; None for anything else (moved, deleted, a folder, outside, a link out)."""
        path = Path(stored).resolve()
        allowed = MEDIA_TYPES.get(path.suffix.lower())
        if allowed is None or not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path, allowed[0]
