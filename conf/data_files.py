"""Cheap checks of local data files (``data.data_files``) before ``datasets`` reads them.

``datasets.load_dataset`` reports a bad file as a long ``DatasetGenerationError`` that hides the cause
(and a missing one as a long traceback). These checks find the cause first, with the standard library
only, and raise a one-line :class:`conf.checks.DataError` naming the file, its split and, where there
is one, the line and column:

* the file exists, is a file and is not empty (only whitespace counts as empty);
* its bytes decode as UTF-8 (``datasets`` reads text files as UTF-8);
* CSV (``csv`` module, the dialect ``pandas.read_csv`` uses by default): a quoted field that is never
  closed, rows with more fields than the header (``pandas`` stops at them), and the files of one
  split having different headers;
* JSON: one JSON document (a list of objects, or an object), else JSON Lines whose every non-blank
  line is a JSON object;
* Parquet: the ``PAR1`` magic bytes at both ends.

A bad row (a CSV row with too many fields, a JSON Lines line that is not a JSON object) can be skipped:
with ``on_invalid="skip"`` :func:`check_data_files` returns the bad lines of each file instead of
raising (the data module then reads a copy without them). A file that is missing, empty, not UTF-8 or
broken as a whole cannot be skipped: that is an error whatever ``on_invalid`` says, and the message
says so. Config time: :func:`commands.backbone_checks.check_config` runs these checks before any run
starts; the data modules run them again before they read the files (a file checked once is not read
again while its size and modification time stay the same).
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conf.checks import DataError

__all__ = ["FORMATS", "BadLines", "split_files", "file_format", "check_data_files"]

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_CANNOT_SKIP = " (data.on_invalid=skip skips bad rows, not a whole file)"
_SKIP_HINT = " (data.on_invalid=skip drops such lines and reports them)"


@dataclass(frozen=True)
class BadLines:
    """The skippable bad lines of one file (format ``kind``): ``lines`` maps a 1-based line number to
    what is wrong."""

    split: str
    path: str
    kind: str
    lines: dict[int, str] = field(default_factory=dict)


def split_files(data_files: Any) -> list[tuple[str, str]]:
    """(split, file or pattern) of ``data.data_files``: a file or a list is the ``train`` split."""
    if isinstance(data_files, str):
        return [("train", data_files)]
    if isinstance(data_files, dict):
        return [(s, f) for s, v in data_files.items() for f in ([v] if isinstance(v, str) else list(v))]
    return [("train", f) for f in data_files]


def file_format(path: str, builder: str | None = None) -> str | None:
    """``csv``, ``json`` or ``parquet``: ``builder`` when it names one (``data.path=csv``), else by extension."""
    if builder in ("csv", "json", "parquet"):
        return builder
    return FORMATS.get(Path(path).suffix.lower())


def _where(path: str, split: str) -> str:
    return f"data file {path!r} (split {split!r})"


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _csv_bad_lines(text: str) -> tuple[dict[int, str], str | None, tuple[str, ...]]:
    """(bad rows by line, a whole-file problem or None, the header) of CSV text."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long documents exceed the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    bad: dict[int, str] = {}
    start = 1
    for row in reader:
        if header is None:
            header = row
        elif len(row) > len(header):
            bad[start] = f"{len(row)} fields, the header has {len(header)} ({', '.join(header)})"
        last_start, start = start, reader.line_num + 1
    if text.count('"') % 2:  # every quote of a well-formed file is paired ("" escapes one)
        return bad, f"line {last_start}: a quoted field is never closed (it runs to the end of the file)", ()
    return bad, None, tuple(header or ())


def _json_bad_lines(text: str) -> tuple[dict[int, str], str | None]:
    """(bad lines, a whole-file problem or None) of JSON or JSON Lines text."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        whole = err
    else:
        if isinstance(doc, dict) or (isinstance(doc, list) and all(isinstance(r, dict) for r in doc)):
            return {}, None
        return {}, f"expected a list of JSON objects, an object, or JSON Lines; got a JSON {type(doc).__name__}"
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip())
    try:
        json_lines = isinstance(json.loads(lines[first]), dict)
    except json.JSONDecodeError:
        json_lines = False
    if not json_lines:  # one (broken) JSON document, or JSON Lines whose first line is broken
        return {}, f"line {whole.lineno}, column {whole.colno}: not JSON ({whole.msg})"
    bad: dict[int, str] = {}
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            bad[i] = f"column {err.colno}: not JSON ({err.msg})"
            continue
        if not isinstance(row, dict):
            bad[i] = f"expected a JSON object, got a JSON {type(row).__name__}"
    return bad, None


@functools.lru_cache(maxsize=64)
def _check_file(path: str, kind: str, size: int, mtime_ns: int) -> tuple[tuple[tuple[int, str], ...], str | None, tuple]:
    """(bad lines, a whole-file problem, the CSV header) of one existing, non-empty file (cached by
    size and mtime)."""
    data = Path(path).read_bytes()
    if kind == "parquet":
        ok = data[:4] == b"PAR1" and data[-4:] == b"PAR1"
        return (), None if ok else "not a Parquet file (no PAR1 magic bytes)", ()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, col = _line_col(data, err.start)
        return (), f"line {line}, column {col}: not UTF-8 (byte 0x{data[err.start]:02x}); save it as UTF-8", ()
    if not text.strip():
        return (), "is empty", ()
    bad, whole, header = _csv_bad_lines(text) if kind == "csv" else (*_json_bad_lines(text), ())
    return tuple(sorted(bad.items())), whole, header


def check_data_files(data_files: Any, builder: str | None = None, on_invalid: str = "error") -> list[BadLines]:
    """Check every local file of ``data.data_files`` (see the module docstring). Raises
    :class:`DataError` for the first problem; with ``on_invalid="skip"`` returns the skippable bad lines
    of each file that has some instead. Remote files (``scheme://``) are left to ``datasets``."""
    skip = str(on_invalid) == "skip"
    found: list[BadLines] = []
    headers: dict[str, tuple[str, tuple]] = {}  # split -> (its first CSV file, that file's header)
    for split, pattern in split_files(data_files):
        if "://" in pattern:
            continue
        files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not files:
            raise DataError(f"{_where(pattern, split)}: the pattern matches no file")
        for f in files:
            p = Path(f)
            if not p.exists():
                raise DataError(f"{_where(f, split)}: no such file" + (_CANNOT_SKIP if skip else ""))
            if not p.is_file():
                raise DataError(f"{_where(f, split)}: not a file")
            kind = file_format(f, builder)
            if kind is None:
                raise DataError(f"{_where(f, split)}: cannot tell the file format from its extension; expected "
                                f"{', '.join(FORMATS)} (or set data.path to csv, json or parquet)")
            st = p.stat()
            if st.st_size == 0:
                raise DataError(f"{_where(f, split)}: is empty" + (_CANNOT_SKIP if skip else ""))
            bad, whole, header = _check_file(str(p.resolve()), kind, st.st_size, st.st_mtime_ns)
            if whole is not None:
                sep = ", " if whole.startswith("line ") else ": "
                raise DataError(f"{_where(f, split)}{sep}{whole}" + (_CANNOT_SKIP if skip else ""))
            first, first_header = headers.setdefault(split, (f, header))
            if header and first_header and header != first_header:
                raise DataError(f"{_where(f, split)}: its header ({', '.join(header)}) differs from that of {first!r} "
                                f"({', '.join(first_header)}); the files of one split need the same columns")
            if bad and not skip:
                line, what = bad[0]
                sep = ", " if what.startswith("column ") else ": "
                raise DataError(f"{_where(f, split)}, line {line}{sep}{what}" + _SKIP_HINT)
            if bad:
                found.append(BadLines(split, f, kind, dict(bad)))
    return found
