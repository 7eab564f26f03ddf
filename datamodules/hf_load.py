"""Loading a Hugging Face dataset, and carving a split out of another.

``datasets.load_dataset(path, subset)`` under the dataset's public name by default (``DEFAULT_PATH``/
``DEFAULT_SUBSET`` of the DataModule; ``data.path``/``data.subset`` override them). ``data.data_files``
(a file, a list, or a ``{split: file(s)}`` mapping of local CSV / JSON / JSONL / Parquet files)
switches to the files: the builder is chosen from the extension (``.csv`` → csv, ``.json``/``.jsonl``
→ json, ``.parquet`` → parquet), so the very same code path reads the public dataset and a local file
in its schema. A single file or a list becomes the ``train`` split.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher

from conf.checks import DataError
from conf.data_files import FORMATS, BadLines, check_data_files, split_files

log = logging.getLogger(__name__)

__all__ = ["DataError", "load_raw", "carve"]



def _builder_for(data_files: Any) -> str:
    files = [f for _, f in split_files(data_files)]
    exts = {Path(f).suffix.lower() for f in files}
    builders = {FORMATS.get(e) for e in exts}
    if None in builders or len(builders) != 1:
        raise DataError(
            f"data.data_files={data_files!r}: cannot tell the file format from the extensions {sorted(exts)}; "
            f"expected one kind of {', '.join(sorted(FORMATS))} (or set data.path to csv, json or parquet)"
        )
    return builders.pop()


def _without_lines(bad: BadLines, clean_dir: Path) -> str:
    """A copy of ``bad.path`` without its bad lines, under ``clean_dir`` (named after the source file, its
    size, modification time and the dropped lines, so an unchanged file maps to the same copy and the
    ``datasets`` fingerprint of the copy stays the same from run to run)."""
    src = Path(bad.path)
    st = src.stat()
    key = Hasher.hash([str(src.resolve()), st.st_size, st.st_mtime_ns, sorted(bad.lines)])
    dst = clean_dir / f"{src.stem}-{key}{src.suffix}"
    if not dst.exists():
        clean_dir.mkdir(parents=True, exist_ok=True)
        text = src.read_text(encoding="utf-8")
        if bad.kind == "csv":  # rows, not physical lines: a quoted field may span lines
            reader = csv.reader(io.StringIO(text, newline=""))
            out = io.StringIO(newline="")
            writer, start = csv.writer(out), 1
            for row in reader:
                if start not in bad.lines:
                    writer.writerow(row)
                start = reader.line_num + 1
            text = out.getvalue()
        else:
            text = "".join(line for i, line in enumerate(text.splitlines(keepends=True), 1) if i not in bad.lines)
        tmp = dst.with_suffix(dst.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(dst)
    return str(dst)


def _replace_files(data_files: Any, replaced: dict[str, str]) -> Any:
    if isinstance(data_files, str):
        return replaced.get(data_files, data_files)
    if isinstance(data_files, dict):
        return {s: _replace_files(v, replaced) for s, v in data_files.items()}
    return [replaced.get(f, f) for f in data_files]


def load_raw(owner: str, path: str | None, subset: str | None, data_files: Any, cache_dir: str | None,
             on_invalid: str = "error", clean_dir: Path | None = None):
    """The raw ``DatasetDict``: the local ``data_files`` when given (``path`` may name their builder),
    else ``load_dataset(path, subset)``; ``owner`` (the DataModule) names what is missing.

    Local files are checked first (:func:`conf.data_files.check_data_files`: a one-line
    :class:`DataError` naming the file, split, line and column). With ``on_invalid="skip"`` the
    unparsable lines are dropped: ``datasets`` reads a copy without them, written under ``clean_dir``.
    Returns ``(raw, skipped)``: the dataset and the number of dropped lines per split."""
    skipped: dict[str, int] = {}
    if data_files is not None:
        builder = path if path in ("csv", "json", "parquet") else _builder_for(data_files)
        bad = check_data_files(data_files, builder, on_invalid)
        if bad:
            if clean_dir is None:
                raise DataError(f"{owner}: no folder for the cleaned copies of {[b.path for b in bad]}")
            for b in bad:
                skipped[b.split] = skipped.get(b.split, 0) + len(b.lines)
                msg = (f"data: skipped {len(b.lines)} unparsable line(s) of {b.path!r} (split {b.split!r}): lines "
                       f"{', '.join(map(str, sorted(b.lines)))} [data.on_invalid=skip]")
                log.warning(msg)
                print(msg, flush=True)
            data_files = _replace_files(data_files, {b.path: _without_lines(b, clean_dir) for b in bad})
        try:
            return datasets.load_dataset(builder, data_files=data_files, cache_dir=cache_dir), skipped
        except DatasetGenerationError as err:  # what the checks above did not foresee: its cause, on one line
            cause = err.__cause__ or err
            raise DataError(f"data.data_files={data_files!r}: {type(cause).__name__}: "
                            f"{' '.join(str(cause).split())[:300]}") from None
    if not path:
        raise DataError(f"{owner}: set data.path (a dataset name or folder) or data.data_files (local files)")
    return datasets.load_dataset(path, subset, cache_dir=cache_dir), skipped


def carve(ds, ident: str, n: int, what: str, seed: int):
    """Deterministic split of ``ds`` into ((rest, its identity), (``n`` carved rows, their identity))
    with ``seed``; the identities enter the tokenization cache key."""
    if len(ds) < 2:
        raise DataError(f"cannot carve a {what} split from {len(ds)} train example(s); provide a {what} split")
    n = min(len(ds) - 1, max(1, n))
    keys = [Hasher.hash([ident, what, n, seed, part]) for part in ("rest", "carved")]
    parts = ds.train_test_split(test_size=n, seed=seed, shuffle=True,
                                train_new_fingerprint=keys[0], test_new_fingerprint=keys[1])
    return (parts["train"], keys[0]), (parts["test"], keys[1])
