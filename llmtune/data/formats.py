"""One reader per file format, each yielding (where, row, problem) with the row's file:line:
jsonl / txt line by line, json arrays with each element's line, csv / tsv (decoded once, so a
bad byte names its line), parquet, and datasets save_to_disk folders. A file that cannot be read
at all raises BadInput naming it."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput

CSV_TOO_LONG = (
    "a field is longer than the csv module's limit of {} characters: usually a quote (\") that is never "
    "closed, in the row starting here; store very long texts in .jsonl or .parquet"
)


def iter_file(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(where, row, problem) for each row of a file; raises BadInput for a bad file."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return _saved_rows(path)
    if path.stat().st_size == 0:
        raise BadInput("the file is empty (0 bytes)", file=str(path))
    if suffix == ".json":
        return _json_rows(path)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _parquet_rows(path)
    return _line_rows(path, as_json=suffix == ".jsonl")


def _line_rows(path: Path, as_json: bool) -> Iterator[tuple[str, Any, str | None]]:
    # bytes, decoded line by line: a bad byte spoils its own line, not the whole file
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where, line = f"{path}:{n}", raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw
            if problem := _not_utf8(line):
                yield where, None, problem
            elif not line.strip():
                continue
            elif not as_json:
                yield where, {"text": line.decode().rstrip("\r\n")}, None
            else:
                yield where, *_parse_json(line.decode())


def _parse_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply to read"


def _not_utf8(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
    return None


def _utf8_text(path: Path) -> str:
    """The file's text; a bad byte is BadInput with its line (UTF-8 never puts a newline byte
    inside a character, so lines can be checked one by one)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        with path.open("rb") as f:
            line, problem = next((n, _not_utf8(raw)) for n, raw in enumerate(f, 1) if _not_utf8(raw))
        raise BadInput(f"{problem}; save the file as UTF-8", file=str(path), line=line) from None


def _json_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    text = _utf8_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"invalid JSON: {exc.msg} at column {exc.colno}", file=str(path), line=exc.lineno
        ) from None
    except RecursionError:
        raise BadInput("invalid JSON: nested too deeply to read", file=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        yield from ((f"{path}[data][{i}]", row, None) for i, row in enumerate(data["data"]))
    elif not isinstance(data, list):
        message = f'expected a JSON list of row objects (or {{"data": [...]}}), got {kind_of(data)}'
        raise BadInput(f"{message}; one object per line is a .jsonl file", file=str(path), line=1)
    else:
        yield from ((f"{path}:{line}", row, None) for line, row in zip(_element_lines(text), data))


def _element_lines(text: str) -> Iterator[int]:
    """The line each element of a (valid) top-level JSON list starts on."""
    decoder, skip = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos = text.index("[") + 1
    line, counted = 1, 0
    while True:
        pos = skip.match(text, pos).end()  # type: ignore[union-attr]  # always matches
        if text[pos] == "]":
            return
        line, counted = line + text.count("\n", counted, pos), pos
        yield line
        pos = decoder.raw_decode(text, pos)[1]


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, Any, str | None]]:
    text = _utf8_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    last = 1  # the line the last good row ended on: a bad one starts after it
    try:
        header = reader.fieldnames or []
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise BadInput(f"the header names column {twice[0]!r} twice", file=str(path), line=1)
        for row in reader:
            where, last = f"{path}:{reader.line_num}", reader.line_num
            if None in row or any(v is None for v in row.values()):
                got = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
                yield where, None, f"expected {len(header)} columns (as in the header), got {got}"
            else:
                yield where, dict(row), None
    except csv.Error as exc:
        too_long = "field larger than field limit" in str(exc)
        message = CSV_TOO_LONG.format(csv.field_size_limit()) if too_long else f"unreadable CSV: {exc}"
        raise BadInput(message, file=str(path), line=last + 1) from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BadInput(f"not a readable parquet file: {_first_line(exc)}", file=str(path)) from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}[{i}]", row, None


def _saved_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    import datasets
    import pyarrow as pa

    try:
        dataset = datasets.load_from_disk(str(path))
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        raise BadInput(f"not a readable save_to_disk folder: {_first_line(exc)}", file=str(path)) from None
    for i, row in enumerate(dataset):
        yield f"{path}[{i}]", dict(row), None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def kind_of(value: Any) -> str:
    """How a JSON value that is not a row reads in a message."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
