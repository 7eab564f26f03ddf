"""Loading a Hugging Face dataset, and carving a split out of another.

``datasets.load_dataset(path, subset)`` under the dataset's public name by default (``DEFAULT_PATH``/
``DEFAULT_SUBSET`` of the DataModule; ``data.path``/``data.subset`` override them). ``data.data_files``
(a file, a list, or a ``{split: file(s)}`` mapping of local CSV / JSON / JSONL / Parquet files)
switches to the files: the builder is chosen from the extension (``.csv`` → csv, ``.json``/``.jsonl``
→ json, ``.parquet`` → parquet), so the very same code path reads the public dataset and a local file
in its schema. A single file or a list becomes the ``train`` split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from datasets.fingerprint import Hasher

__all__ = ["DataError", "load_raw", "carve"]

_EXTENSION_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """Bad input data: the message names the split, the example index, the column and what was expected."""


def _files_of(data_files: Any) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in ([v] if isinstance(v, str) else list(v))]
    return list(data_files)


def _builder_for(data_files: Any) -> str:
    files = _files_of(data_files)
    exts = {Path(f).suffix.lower() for f in files}
    builders = {_EXTENSION_BUILDERS.get(e) for e in exts}
    if None in builders or len(builders) != 1:
        raise DataError(
            f"data.data_files={data_files!r}: cannot tell the file format from the extensions {sorted(exts)}; "
            f"expected one kind of {', '.join(sorted(_EXTENSION_BUILDERS))} (or set data.path to csv, json or parquet)"
        )
    return builders.pop()


def load_raw(owner: str, path: str | None, subset: str | None, data_files: Any, cache_dir: str | None):
    """The raw ``DatasetDict``: the local ``data_files`` when given (``path`` may name their builder),
    else ``load_dataset(path, subset)``; ``owner`` (the DataModule) names what is missing."""
    if data_files is not None:
        missing = [f for f in _files_of(data_files) if not any(c in f for c in "*?[") and not Path(f).is_file()]
        if missing:
            raise DataError(f"data.data_files: no such file(s) {missing}")
        builder = path if path in ("csv", "json", "parquet") else _builder_for(data_files)
        return datasets.load_dataset(builder, data_files=data_files, cache_dir=cache_dir)
    if not path:
        raise DataError(f"{owner}: set data.path (a dataset name or folder) or data.data_files (local files)")
    return datasets.load_dataset(path, subset, cache_dir=cache_dir)


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
