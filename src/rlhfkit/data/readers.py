"""Read the rows of a local dataset file, each tagged with a location a person can find again.

Every later error about a row (a bad field, a bad value) is reported at that location, so a user can
open the file and fix the row instead of guessing which of a million rows the trainer choked on.
Locations: JSONL rows are `file.jsonl:LINE` (1-based line numbers, as editors show them; blank lines are
skipped but counted); rows of every other format are `name[row I]` with a 0-based index, the index that
`dataset[I]` or `json.load(f)[I]` takes. Nothing is ever downloaded: only local paths are read.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import UserError

SUPPORTED_FORMATS = (
    ".jsonl, .json, .parquet, or a directory written by datasets' save_to_disk "
    "(DIR, or DIR::SPLIT to pick a split of a DatasetDict; the default split is 'train')"
)
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


class DataError(UserError):
    """A dataset that cannot be used; the message names the file and, where known, the row and field."""


@dataclass(frozen=True)
class Row:
    """One record as read from disk: its fields, and where it came from (see the module docstring)."""

    location: str
    data: dict[str, Any]


def read_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """Rows of a JSONL, JSON, Parquet file or save_to_disk directory, in file order.

    The path and format are checked now, so a wrong path fails at the call; JSONL and Parquet rows are
    then read as they are iterated, so a large file is never held in memory twice.
    """
    name, _, split = str(path).partition("::")
    source = Path(name)
    if not source.exists():
        raise DataError(f"{name}: no such file or directory")
    if source.is_dir():
        return _read_saved_dataset(source, name, split or None)
    if split:
        raise DataError(f"{path}: '::{split}' picks a split of a dataset directory, and {name} is a file")
    reader = _READERS.get(source.suffix.lower())
    if reader is None:
        raise DataError(
            f"{name}: unsupported format {source.suffix or '(no extension)'!r}; supported: {SUPPORTED_FORMATS}"
        )
    return reader(source, name)


def decode_utf8(data: bytes, name: str, first_line: int = 1, offset: int = 0) -> str:
    """`data` as text; bytes that are not UTF-8 are a DataError naming the line and the byte offset in the file.

    A leading byte-order mark (written by some Windows tools, and unreadable to json) is dropped.
    `first_line` and `offset` place `data` in its file when it is one line of it.
    """
    if offset == 0 and data.startswith(codecs.BOM_UTF8):
        data, offset = data[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        raise DataError(
            f"{name}:{line}: not UTF-8 text (byte {offset + error.start} of the file is {data[error.start]:#04x}); "
            "re-save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path, name: str) -> Iterator[Row]:
    with path.open("rb") as lines:  # bytes, decoded line by line: a bad byte is then placed on its line
        offset = 0
        for number, raw in enumerate(lines, start=1):
            line = decode_utf8(raw, name, number, offset)
            offset += len(raw)
            if line.strip():
                location = f"{name}:{number}"
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{location}: invalid JSON: {error.msg} (column {error.colno})") from None
                yield Row(location, _as_object(value, location))


def _read_json(path: Path, name: str) -> Iterator[Row]:
    try:
        document = json.loads(decode_utf8(path.read_bytes(), name))
    except json.JSONDecodeError as error:
        raise DataError(f"{name}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})") from None
    return _indexed(name, _json_rows(document, name))


def _json_rows(document: Any, name: str) -> list[Any]:
    """The list of rows: the document itself, or the one list in a wrapper such as {"data": [...]}."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        lists = [value for value in document.values() if isinstance(value, list)]
        if len(lists) == 1:
            return lists[0]
        found = f"an object with {len(lists)} list-valued keys"
    else:
        found = _json_type(document)
    raise DataError(
        f"{name}: expected a list of objects, or an object with exactly one list-valued key "
        f'such as {{"data": [...]}}; got {found}'
    )


def _read_parquet(path: Path, name: str) -> Iterator[Row]:
    import pyarrow  # imported here, like datasets below: heavy, and only needed for this format
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.ParquetFile(path)
    except pyarrow.ArrowException as error:
        raise DataError(f"{name}: not a readable Parquet file: {error}") from None
    return _indexed(name, itertools.chain.from_iterable(batch.to_pylist() for batch in table.iter_batches()))


def _read_saved_dataset(path: Path, name: str, split: str | None) -> Iterator[Row]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(
            f"{name}: a directory, but not one written by datasets' save_to_disk; supported: {SUPPORTED_FORMATS}"
        ) from None
    if isinstance(dataset, DatasetDict):
        split = split or "train"
        if split not in dataset:
            raise DataError(f"{name}: no split {split!r}; it has {', '.join(dataset)} (pick one with {name}::SPLIT)")
        return _indexed(f"{name}::{split}", dataset[split])
    if split:
        raise DataError(f"{name}: a single dataset without splits; drop '::{split}'")
    return _indexed(name, dataset)


def _indexed(name: str, values: Iterable[Any]) -> Iterator[Row]:
    for index, value in enumerate(values):
        location = f"{name}[row {index}]"
        yield Row(location, _as_object(value, location))


def _as_object(value: Any, location: str) -> dict[str, Any]:
    """The row itself: a record is a set of named fields, so anything but a JSON object is an error."""
    if not isinstance(value, dict):
        raise DataError(f"{location}: expected a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a number")


_READERS: dict[str, Callable[[Path, str], Iterator[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
}
